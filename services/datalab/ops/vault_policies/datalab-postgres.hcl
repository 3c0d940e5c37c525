# datalab-postgres: the postgres job reads its superuser password. Nothing else.

path "kv/data/datalab/postgres" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
