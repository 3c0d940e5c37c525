# Production: Docker driver, the released image, more instances, a GPU for ai.
datacenters = ["dc1", "dc2"]
driver      = "docker"
# PLACEHOLDER: your registry's path for the image, tagged with pyproject.toml's version
# (tests/jobs/test_image.py). Publish it with
#   scripts/build-image --tag <registry>/datalab:<version> && docker push <registry>/datalab:<version>
# Registry credentials belong in the Nomad clients' docker plugin config (auth.config /
# a credential helper), never here. Pinning a digest (`...:0.1.0@sha256:...`) also works.
image = "registry.example.internal/datalab:0.1.0"
# Each client's own Consul agent, on the docker bridge: a container's 127.0.0.1 is its own.
# The Consul clients listen there and on loopback, never on the LAN; Docker's daemon.json
# pins the bridge address ("bip", scripts/provision/25-docker.sh). Traefik (host network)
# reaches it there too.
consul_addr = "http://172.17.0.1:8500"
counts = {
  gateway = 3
  data    = 3
  ai      = 2
  compute = 2
  workers = 4
  viz     = 2
}
resources = {
  data    = { cpu = 1000, memory = 2048 }
  ai      = { cpu = 2000, memory = 8192 }
  workers = { cpu = 2000, memory = 4096 }
}
gpu_count      = 1
gpu_min_memory = "16 GiB"
# The containers run as this uid:gid (the task's docker `user`), which owns their rendered
# secrets/ files; /srv/datalab on the clients belongs to it (provisioning).
run_as_uid = 10001
run_as_gid = 10001
