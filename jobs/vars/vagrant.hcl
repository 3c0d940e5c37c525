# The Vagrant cluster: Docker driver on two clients, the image built by
# scripts/build-image and loaded into each client.
datacenters = ["dc1"]
driver      = "docker"
# The image no registry serves: each client builds it (`scripts/build-image` in the synced
# folder) or loads the tarball `scripts/build-image --save` wrote under .cluster/images/.
# The docker driver runs a local image without pulling (any tag but `latest`). The tag is
# pyproject.toml's version (tests/jobs/test_image.py).
image = "datalab:0.1.0"
# Each client's own Consul agent, on the docker bridge: a container's 127.0.0.1 is its own.
# The Consul clients listen there and on loopback, never on the LAN; Docker's daemon.json
# pins the bridge address ("bip", scripts/provision/25-docker.sh). Traefik (host network)
# reaches it there too.
consul_addr = "http://172.17.0.1:8500"
counts = {
  gateway = 2
  data    = 2
  ai      = 1
  compute = 2
  workers = 2
  viz     = 2
}
gpu_count = 0 # DATALAB_GPU=1 adds a GPU client: deploy ai with --var gpu_count=1
# The containers run as this uid:gid (the task's docker `user`), which owns their rendered
# secrets/ files; /srv/datalab on the clients belongs to it (provisioning).
run_as_uid = 10001
run_as_gid = 10001
# PostgreSQL and Redis stay on the client that holds their data (a client stopped elsewhere
# loses none of it: scripts/cluster-test's client-stop fault stops another one).
stateful_node = "client1"
