#!/usr/bin/env bash
# 25-docker: Docker on the clients, for Nomad's docker driver (jobs/vars/vagrant.hcl).
# Before Consul: the Consul client also listens on the docker bridge (30-consul), which must
# exist when it starts.
# Ubuntu's docker.io: signed by the Ubuntu archive and patched with it, so it is not pinned
# here; the images the jobs run are (datalab:<version>, postgres:18.1, redis:7.4, traefik:v3.7).
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
only_on client

since="$(mark)"
# docker-buildx: scripts/build-image needs BuildKit, which Docker >= 23 only drives through it.
# A container node (Debian bookworm: no docker-buildx package) builds nothing: 50-datalab
# loads the images.
if is_container; then apt_install docker.io; else apt_install docker.io docker-buildx; fi
# Logs rotated by Docker itself: Nomad reads them through its logmon, and a chatty task must
# not fill a small VM disk.
put_file /etc/docker/daemon.json 0644 root:root <<JSON
{
  "bip": "${DOCKER_BRIDGE_IP}/16",
  "log-driver": "json-file",
  "log-opts": { "max-size": "10m", "max-file": "3" }
}
JSON
apply_service docker "$since"
docker_answers() { docker info >/dev/null 2>&1; }
dry || wait_until "the Docker daemon" 60 docker_answers
