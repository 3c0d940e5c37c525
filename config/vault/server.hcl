# Vault (or OpenBao: `bao server -config ...` takes the same file) on a cluster server:
# integrated (raft) storage, TLS listener, UI. Init/unseal: scripts/provision; then
# `datalab vault bootstrap` (engines, roles, policies, Nomad workload identity).
# The TLS paths are placeholders the provisioning fills; the integration tests start a real
# OpenBao with this file (addresses, paths and a throwaway certificate substituted).
ui            = true
api_addr      = "https://192.168.56.10:8200"
cluster_addr  = "https://192.168.56.10:8201"
disable_mlock = true # Vault: recommended with raft; OpenBao (no mlock at all) warns and ignores it

storage "raft" {
  path    = "/opt/vault/data"
  node_id = "server-1"
}

listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"
  tls_cert_file   = "/etc/vault.d/tls/server.pem"
  tls_key_file    = "/etc/vault.d/tls/server-key.pem"
  tls_min_version = "tls12"
}
