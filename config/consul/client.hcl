# Consul client agent (one per Nomad client): joins the servers over the private network.
# scripts/provision/30-consul.sh copies this file as /etc/consul.d/consul.hcl and renders the
# node's own part next to it (node.hcl: node_name, bind/advertise address, retry_join = the
# servers). The gossip key and the agent's ACL tokens are in data_dir, never in a config file.
datacenter  = "dc1"
data_dir    = "/opt/consul/data"
bind_addr   = "{{ GetInterfaceIP \"eth1\" }}"
client_addr = "127.0.0.1"

acl {
  enabled        = true
  default_policy = "deny"
  # The agent's own tokens (agent, dns) live in data_dir/acl-tokens.json, as
  # `consul acl set-agent-token` leaves them: provisioning writes that file.
  enable_token_persistence = true
}

tls {
  defaults {
    ca_file         = "/etc/consul.d/tls/ca.pem"
    cert_file       = "/etc/consul.d/tls/client.pem" # client.dc1.consul: the servers verify_incoming
    key_file        = "/etc/consul.d/tls/client-key.pem"
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
}
