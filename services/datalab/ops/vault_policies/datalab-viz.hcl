# datalab-viz: what the viz job's workload identity may read. Nothing else.

path "kv/data/datalab/shared" {
  capabilities = ["read"]
}

# Its own Redis ACL user (core/redis_users.py), no other service's.
path "kv/data/datalab/redis/viz" {
  capabilities = ["read"]
}

# Nomad renews the token it derived from the workload identity.
path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
