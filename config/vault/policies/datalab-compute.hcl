# datalab-compute: what the compute job's workload identity may read. Nothing else.

path "kv/data/datalab/shared" {
  capabilities = ["read"]
}

path "kv/data/datalab/platform" {
  capabilities = ["read"]
}

# Its own Redis ACL users: the API's and the workers' (compute-batch runs as a worker).
path "kv/data/datalab/redis/compute" {
  capabilities = ["read"]
}

path "kv/data/datalab/redis/worker" {
  capabilities = ["read"]
}

# Nomad renews the token it derived from the workload identity.
path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
