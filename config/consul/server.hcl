# Consul server (cluster): ACLs on with default deny, TLS from the cluster CA.
datacenter       = "dc1"
data_dir         = "/opt/consul/data"
server           = true
bootstrap_expect = 1 # 3 for a three-server cluster
bind_addr        = "{{ GetInterfaceIP \"eth1\" }}"
client_addr      = "127.0.0.1"
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
}

ports {
  https = 8501
}
