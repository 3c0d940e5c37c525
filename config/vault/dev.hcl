# A local single-node Vault/OpenBao that keeps its data across restarts (unlike
# `bao server -dev`, which `make e2e` uses): `bao server -config config/vault/dev.hcl`,
# then `bao operator init` / `bao operator unseal` once. Loopback only, no TLS; the address
# is the one config/nomad/dev.hcl points at.
ui            = true
api_addr      = "http://127.0.0.1:8200"
cluster_addr  = "http://127.0.0.1:8201"
disable_mlock = true # Vault reads it; OpenBao (no mlock at all) warns and ignores it

# Integrated storage here too: OpenBao has no "file" backend, and raft is what clusters run.
storage "raft" {
  path    = "/tmp/datalab-openbao-dev"
  node_id = "dev-1"
}

listener "tcp" {
  address         = "127.0.0.1:8200"
  cluster_address = "127.0.0.1:8201"
  tls_disable     = true
}
