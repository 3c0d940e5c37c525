# Consul client agent (one per Nomad client): joins the servers over the private network.
datacenter  = "dc1"
data_dir    = "/opt/consul/data"
bind_addr   = "{{ GetInterfaceIP \"eth1\" }}"
client_addr = "127.0.0.1"
retry_join  = ["192.168.56.10"]

acl {
  enabled        = true
  default_policy = "deny"
}

tls {
  defaults {
    ca_file         = "/etc/consul.d/tls/ca.pem"
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
}
