# One machine, real Nomad/Consul/Vault dev agents, the raw_exec driver (`make e2e`).
# `make e2e` adds the machine-specific values with --var: venv, datalab_home, consul_addr,
# and run_as_uid / run_as_gid = the ids of run_as_user (`id -u datalab`, `id -g datalab`).
# Without those two the secrets/ files stay root-owned (0400) and the tasks, running as
# run_as_user, cannot read them.
datacenters = ["dc1"]
driver      = "raw_exec"
run_as_user = "datalab"
counts = {
  gateway = 1
  data    = 1
  ai      = 1
  compute = 1
  workers = 1
  viz     = 1
}
resources = {
  gateway       = { cpu = 200, memory = 256 }
  data          = { cpu = 200, memory = 384 }
  ai            = { cpu = 200, memory = 512 }
  compute       = { cpu = 200, memory = 256 }
  workers       = { cpu = 300, memory = 512 }
  viz           = { cpu = 200, memory = 512 }
  traefik       = { cpu = 100, memory = 128 }
  compute-batch = { cpu = 300, memory = 512 }
}
gpu_count = 0
