# Local dev agent (`nomad agent -dev -config config/nomad/dev.hcl`): server + client on
# loopback, raw_exec on, wired to local Consul and Vault/OpenBao dev servers. `make e2e`
# writes the same settings with free ports (services/datalab/devstack/hashistack.py).
bind_addr = "127.0.0.1"
data_dir  = "/tmp/datalab-nomad-dev"

server {
  enabled          = true
  bootstrap_expect = 1
}

client {
  enabled = true
  # Outside data_dir: Nomad creates data_dir (and any missing parent) 0700, so a raw_exec
  # task running as `datalab` could not enter its own task dir there ("fork/exec ...:
  # permission denied"). Nomad creates alloc_dir itself 0711.
  alloc_dir = "/tmp/datalab-nomad-dev-alloc"

  # Templates (secrets, endpoints) ride out a Vault or Consul outage: retried without end
  # (Nomad's default gives up after 12 attempts, ~6 min, and fails the task), and at most
  # 5 s apart, so a credential Vault revoked while it was away (an expired lease) is
  # replaced within seconds of its return, inside the 30 s requests wait for one
  # (default max_backoff 1m: seen by make cluster's vault-down fault as a 58 s gap).
  template {
    vault_retry {
      attempts    = 0
      backoff     = "250ms"
      max_backoff = "5s"
    }
    consul_retry {
      attempts    = 0
      backoff     = "250ms"
      max_backoff = "5s"
    }
  }
  options = {
    # env_aws aborts the agent when AWS_CA_BUNDLE is set, and the cloud fingerprinters
    # probe 169.254.169.254: neither belongs on a dev agent.
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
  }

  # No host volumes: the agent refuses to start when a volume's path is missing ("failed to
  # validate volume datalab ... no such file or directory"), and the raw_exec jobs use
  # datalab_home directly. The Docker variant (client.hcl) mounts the `datalab` volume.
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
