# Consul server (cluster): ACLs on with default deny, TLS from the cluster CA.
# scripts/provision/30-consul.sh copies this file as /etc/consul.d/consul.hcl and renders the
# node's own part next to it (node.hcl: node_name, bind/advertise address, retry_join,
# bootstrap_expect). The gossip key and the agent's ACL tokens are in data_dir, never here.
datacenter       = "dc1"
data_dir         = "/opt/consul/data"
server           = true
bootstrap_expect = 1 # provisioning: the number of servers (node.hcl)
bind_addr        = "{{ GetInterfaceIP \"eth1\" }}"
client_addr      = "127.0.0.1" # plain HTTP and DNS: this node only

# HTTPS (8501) on every interface: the UI and API from other hosts (Vagrant forwards it to
# the host's 127.0.0.1), authenticated by ACL tokens (tls.https below takes no client cert).
addresses {
  https = "0.0.0.0"
}

ui_config {
  enabled = true
}

acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
}

tls {
  defaults {
    ca_file         = "/etc/consul.d/tls/ca.pem"
    cert_file       = "/etc/consul.d/tls/server.pem"
    key_file        = "/etc/consul.d/tls/server-key.pem"
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
  https {
    verify_incoming = false # browsers and CLIs bring an ACL token, not a client certificate
  }
}

ports {
  https = 8501
}
