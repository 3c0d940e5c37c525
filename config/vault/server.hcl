# Vault (or OpenBao: `bao server -config ...` takes the same file) for the cluster:
# integrated (raft) storage, TLS listener. Init/unseal: scripts/provision.
ui            = true
api_addr      = "https://192.168.56.10:8200"
cluster_addr  = "https://192.168.56.10:8201"
disable_mlock = true

storage "raft" {
  path    = "/opt/vault/data"
  node_id = "server-1"
}

listener "tcp" {
  address       = "0.0.0.0:8200"
  tls_cert_file = "/etc/vault.d/tls/server.pem"
  tls_key_file  = "/etc/vault.d/tls/server-key.pem"
}
