# datalab-compute: what the compute job's workload identity may read. Nothing else.

path "kv/data/datalab/shared" {
  capabilities = ["read"]
}

path "kv/data/datalab/platform" {
  capabilities = ["read"]
}

# Nomad renews the token it derived from the workload identity.
path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
