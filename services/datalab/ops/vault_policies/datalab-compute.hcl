# datalab-compute: what the compute API task's workload identity may read. Nothing else:
# it only queues jobs, so neither the platform API key nor the workers' Redis user
# (datalab-compute-worker has those).

path "kv/data/datalab/shared" {
  capabilities = ["read"]
}

# Its own Redis ACL user.
path "kv/data/datalab/redis/compute" {
  capabilities = ["read"]
}

# Nomad renews the token it derived from the workload identity.
path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
