# Local dev agent (`nomad agent -dev -config config/nomad/dev.hcl`): server + client on
# loopback, raw_exec on, wired to local Consul and Vault/OpenBao dev servers. `make e2e`
# writes the same settings with free ports (services/devstack/hashistack.py).
bind_addr = "127.0.0.1"
data_dir  = "/tmp/datalab-nomad-dev"

server {
  enabled          = true
  bootstrap_expect = 1
}

client {
  enabled = true
  options = {
    # env_aws aborts the agent when AWS_CA_BUNDLE is set, and the cloud fingerprinters
    # probe 169.254.169.254: neither belongs on a dev agent.
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
  }

  host_volume "datalab" {
    path      = "/tmp/datalab"
    read_only = false
  }
}

plugin "raw_exec" {
  config {
    enabled = true
  }
}

consul {
  address = "127.0.0.1:8500"
}

vault {
  enabled               = true
  address               = "http://127.0.0.1:8200"
  jwt_auth_backend_path = "jwt-nomad/"

  default_identity {
    aud = ["vault.io"]
    ttl = "1h"
  }
}
