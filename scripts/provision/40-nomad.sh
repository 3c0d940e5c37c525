#!/usr/bin/env bash
# 40-nomad: the Nomad agent (server or client), TLS, ACLs, Consul and Vault through workload
# identity.
#
# /etc/nomad.d/nomad.hcl   config/nomad/server.hcl or client.hcl, copied as is
# /etc/nomad.d/gpu.hcl     the GPU client: config/nomad/client-gpu.hcl, copied as is
# /etc/nomad.d/node.hcl    this node's part: name, advertise addresses, server_join,
#                          bootstrap_expect, the private NIC (found by the node's IP), meta
# /etc/nomad.d/nomad.env   root-only EnvironmentFile: the agent's own Consul token
#                          (CONSUL_HTTP_TOKEN; config/nomad/*.hcl never carries one)
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

since="$(mark)"
# Pre-generated like the Consul agent's (30-consul); the bootstrap server creates it in
# Consul with the nomad-agent policy.
ensure_secret "$(node_dir)/nomad-consul.token.json" new_token

ensure_dir /etc/nomad.d 0755 root:root
copy_file "$REPO/config/nomad/$ROLE.hcl" /etc/nomad.d/nomad.hcl 0640 root:nomad
if [[ $GPU == 1 ]]; then copy_file "$REPO/config/nomad/client-gpu.hcl" /etc/nomad.d/gpu.hcl 0640 root:nomad; fi

# The GPU client: a real NVIDIA device (PCI passthrough, vendor 10de) or a simulated one.
gpu_mode=simulated
if [[ $GPU == 1 ]] && ! dry && lspci -n -d 10de: 2>/dev/null | grep -q .; then gpu_mode=passthrough; fi

{
  printf '# Rendered by scripts/provision/40-nomad.sh for %s: re-provisioning rewrites it.\n' "$NODE"
  printf 'name = "%s"\n\n' "$NODE"
  # bind_addr is 0.0.0.0 (nomad.hcl): without these Nomad would advertise the first private
  # address it finds, the NAT one on a Vagrant box.
  printf 'advertise {\n  http = "%s"\n  rpc  = "%s"\n  serf = "%s"\n}\n\n' "$NODE_IP" "$NODE_IP" "$NODE_IP"
  if is_server; then
    printf 'server {\n  bootstrap_expect = %d\n\n' "${#SERVER_IPS[@]}"
    printf '  server_join {\n    retry_join = %s\n  }\n}\n' "$(hcl_list "${SERVER_IPS[@]}")"
  else
    printf 'client {\n  network_interface = "%s" # the NIC holding %s\n\n' "$(node_iface)" "$NODE_IP"
    joins=()
    for ip in "${SERVER_IPS[@]}"; do joins+=("$ip:4647"); done
    # Besides servers = ["nomad.service.consul:4647"] (nomad.hcl): joining does not wait for
    # Consul DNS.
    printf '  server_join {\n    retry_join = %s\n  }\n' "$(hcl_list "${joins[@]}")"
    if [[ $GPU == 1 ]]; then
      printf '\n  meta {\n    gpu_mode = "%s" # simulated: no device, "nvidia/gpu" is not schedulable\n  }\n' "$gpu_mode"
    fi
    printf '}\n'
  fi
} | put_file /etc/nomad.d/node.hcl 0640 root:nomad

printf 'CONSUL_HTTP_TOKEN=%s\n' "$(token_secret "$(node_dir)/nomad-consul.token.json")" |
  put_file /etc/nomad.d/nomad.env 0600 root:root

if is_client; then
  # The paths the client's host volumes name (config/nomad/client.hcl): Nomad refuses to start
  # when one is missing. /opt/nomad 0755 and alloc_dir outside the 0700 data_dir: raw_exec
  # tasks run as `datalab` and must reach their task dir.
  ensure_dir /opt/nomad 0755 root:root
  ensure_dir /srv/datalab 0750 datalab:datalab # the Docker tasks run as 10001:10001
  ensure_dir /srv/postgres 0755 root:root      # the image's entrypoint owns its PGDATA inside
  # Owned by the redis image's user (uid/gid 999, official and images/redis alike), which the
  # entrypoint gives /data at start: as root:root, a re-provision would take it back under
  # a running Redis ("MISCONF ... unable to persist": seen by make cluster's vault-down).
  ensure_dir /srv/redis 0750 999:999
  if [[ $GPU == 1 ]]; then
    ensure_dir /opt/nomad/plugins 0755 root:root # plugin_dir (client-gpu.hcl)
    if [[ $gpu_mode == passthrough && ! -x "$(p /opt/nomad/plugins/nomad-device-nvidia)" ]]; then
      warn "an NVIDIA GPU is attached but /opt/nomad/plugins/nomad-device-nvidia is missing:" \
        "install the NVIDIA driver, nvidia-container-toolkit and the plugin, then re-provision"
    fi
  fi
fi

# The packaged unit (nomad agent -config /etc/nomad.d, Type=notify, EnvironmentFile
# /etc/nomad.d/nomad.env). Started after Consul, as the unit's own comment advises (allocations
# using Consul are restored correctly). Servers run as the unprivileged `nomad` user; clients
# stay root (they run tasks and manage cgroups).
{
  printf '# scripts/provision/40-nomad.sh\n[Unit]\nWants=consul.service\nAfter=consul.service\n'
  if is_server; then printf '\n[Service]\nUser=nomad\nGroup=nomad\n'; fi
} | put_unit_file /etc/systemd/system/nomad.service.d/10-datalab.conf
apply_service nomad "$since"
