# datalab-redis: the redis job reads its ACL (`user` lines, password hashes only). Nothing
# else: not the services' passwords, not the shared secrets.

path "kv/data/datalab/redis-server" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
