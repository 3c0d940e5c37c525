# Local dev agent (`consul agent -dev -config-file config/consul/dev.hcl`).
bind_addr   = "127.0.0.1"
client_addr = "127.0.0.1"
ui_config {
  enabled = true
}
