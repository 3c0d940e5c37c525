# datalab-compute-worker: what the compute workers' workload identity may read (compute's
# "worker" task and compute-batch's "job" task). Nothing else.

path "kv/data/datalab/shared" {
  capabilities = ["read"]
}

# The platform API key: workers act as the platform (read datasets, report models).
path "kv/data/datalab/platform" {
  capabilities = ["read"]
}

# The workers' Redis ACL user.
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
