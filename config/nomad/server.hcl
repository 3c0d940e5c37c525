# Nomad server (cluster). scripts/provision/40-nomad.sh copies it as /etc/nomad.d/nomad.hcl
# next to the node's own part (node.hcl: name, advertise, server_join, bootstrap_expect); TLS
# files come from the cluster CA (20-tls); the agent's Consul token is CONSUL_HTTP_TOKEN in
# the unit's root-only EnvironmentFile. Vault and Consul are reached through workload
# identity (Nomad >= 1.7; the token integration is gone in 1.10).
datacenter = "dc1"
data_dir   = "/opt/nomad/data"
bind_addr  = "0.0.0.0"

server {
  enabled = true
  # bootstrap_expect: the number of servers, in node.hcl only. Nomad loads a config dir in
  # lexical order (node.hcl, then nomad.hcl): a value here would override the node's.
}

acl {
  enabled = true
}

tls {
  http      = true
  rpc       = true
  ca_file   = "/etc/nomad.d/tls/ca.pem"
  cert_file = "/etc/nomad.d/tls/server.pem"
  key_file  = "/etc/nomad.d/tls/server-key.pem"

  # HTTPS takes no client certificate: Consul and Vault fetch Nomad's JWKS (workload
  # identity), CLIs and the UI bring ACL tokens. RPC between agents stays mutual TLS.
  verify_https_client = false

  verify_server_hostname = true
}

consul {
  address = "127.0.0.1:8500"

  # Identities Nomad signs for services and tasks; Consul's `nomad-workloads` JWT auth
  # method trusts them (never set a MaxTokenTTL on it).
  service_identity {
    aud = ["consul.io"]
    ttl = "1h"
  }

  task_identity {
    aud = ["consul.io"]
    ttl = "1h"
  }
}

vault {
  enabled               = true
  address               = "https://vault.service.consul:8200"
  ca_file               = "/etc/nomad.d/tls/ca.pem" # Vault's certificate: the cluster CA
  jwt_auth_backend_path = "jwt-nomad/"

  default_identity {
    aud = ["vault.io"]
    ttl = "1h"
  }
}

telemetry {
  publish_allocation_metrics = true
  publish_node_metrics       = true
  prometheus_metrics         = true
}
