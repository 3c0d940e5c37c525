# datalab-redis: the redis job reads the password it requires of clients. Nothing else.

path "kv/data/datalab/shared" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
