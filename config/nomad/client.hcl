# Nomad client (cluster): Docker for the services, raw_exec enabled for the virtualenv
# variant, host volumes for shared data and the databases. Each client talks to its own
# local Consul agent (sharing one causes flapping). scripts/provision/40-nomad.sh copies it as
# /etc/nomad.d/nomad.hcl next to the node's own part (node.hcl: name, advertise,
# network_interface found by the node's IP, server_join).
datacenter = "dc1"
data_dir   = "/opt/nomad/data"
bind_addr  = "0.0.0.0"

client {
  enabled = true
  servers = ["nomad.service.consul:4647"]
  # network_interface: the private NIC, found by the node's IP, is in node.hcl only. Nomad
  # loads a config dir in lexical order (node.hcl, then nomad.hcl): a value here would
  # override the node's (seen: "invalid interface name eth1" on a node whose NIC is eth0).
  # Not under data_dir, which Nomad keeps 0700: raw_exec tasks run as an unprivileged user
  # and must reach their task dir. Provisioning creates /opt/nomad 0755 (Nomad makes
  # alloc_dir 0711).
  alloc_dir = "/opt/nomad/alloc"

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

  host_volume "datalab" {
    path      = "/srv/datalab"
    read_only = false
  }

  host_volume "postgres" {
    path      = "/srv/postgres"
    read_only = false
  }

  host_volume "redis" {
    path      = "/srv/redis"
    read_only = false
  }
}

acl {
  enabled = true
}

tls {
  http      = true
  rpc       = true
  ca_file   = "/etc/nomad.d/tls/ca.pem"
  cert_file = "/etc/nomad.d/tls/client.pem"
  key_file  = "/etc/nomad.d/tls/client-key.pem"

  # HTTPS takes no client certificate: Consul and Vault fetch Nomad's JWKS (workload
  # identity), CLIs and the UI bring ACL tokens. RPC between agents stays mutual TLS.
  verify_https_client = false
}

# The agent's own Consul token (registering the agent, reading the catalog for server
# discovery) comes from the environment, CONSUL_HTTP_TOKEN in the systemd unit's
# EnvironmentFile: never in this file. Tasks get theirs through workload identity.
consul {
  address             = "127.0.0.1:8500"
  service_auth_method = "nomad-workloads"
  task_auth_method    = "nomad-workloads"
}

vault {
  enabled = true
  address = "https://vault.service.consul:8200"
  ca_file = "/etc/nomad.d/tls/ca.pem" # Vault's certificate: the cluster CA
}

plugin "docker" {
  config {
    allow_privileged = false
    volumes {
      enabled = true
    }
  }
}

plugin "raw_exec" {
  config {
    enabled = true
  }
}
