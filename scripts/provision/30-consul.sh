#!/usr/bin/env bash
# 30-consul: the Consul agent (server or client) with gossip encryption, TLS and ACL tokens.
#
# /etc/consul.d/consul.hcl   config/consul/<role>.hcl, copied as is
# /etc/consul.d/node.hcl     this node's part: name, addresses, retry_join, bootstrap_expect
# /etc/consul.d/vault.hcl    servers: the `vault` service and its health check, registered
#                            by Consul itself (works for Vault and OpenBao alike: OpenBao has
#                            no Consul service registration)
#
# No secret is in a config file. The gossip key and the agent's own ACL tokens are written
# where Consul keeps them itself (data_dir): serf/*.keyring, which `encrypt` would create on
# first start, and acl-tokens.json, which `consul acl set-agent-token` writes with
# acl.enable_token_persistence. Consul reads an agent token from nowhere else but its config
# (hashicorp/consul#9723), and set-agent-token needs acl:write, which no client should hold.
# The tokens are pre-generated ids (the shared dir): the bootstrap server creates them in
# Consul with exactly these ids once ACLs are bootstrapped; until then the agent retries.
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

readonly DATA=/opt/consul/data # data_dir in config/consul/*.hcl
since="$(mark)"

# ---- shared secrets: made by the first node provisioned, kept forever -----------------------
gossip_key() { head -c 32 /dev/urandom | base64; } # what `consul keygen` prints
ensure_secret "$CLUSTER/consul/gossip.key" gossip_key
ensure_secret "$CLUSTER/consul/dns.token.json" new_token
ensure_secret "$(node_dir)/consul-agent.token.json" new_token
if is_server; then ensure_secret "$(node_dir)/consul-registration.token.json" new_token; fi

# ---- configuration ------------------------------------------------------------------------
ensure_dir /etc/consul.d 0755 root:root
copy_file "$REPO/config/consul/$ROLE.hcl" /etc/consul.d/consul.hcl 0640 root:consul

{
  printf '# Rendered by scripts/provision/30-consul.sh for %s: re-provisioning rewrites it.\n' "$NODE"
  printf 'node_name      = "%s"\n' "$NODE"
  printf 'bind_addr      = "%s"\n' "$NODE_IP"
  printf 'advertise_addr = "%s"\n' "$NODE_IP"
  # Clients: the HTTP API on loopback and on the docker bridge (never the LAN), so that tasks
  # in containers reach their own node's agent (25-docker pins the bridge address).
  if ! is_server; then printf 'client_addr    = "127.0.0.1 %s"\n' "$DOCKER_BRIDGE_IP"; fi
  printf 'retry_join     = %s\n' "$(hcl_list "${SERVER_IPS[@]}")"
  if is_server; then printf 'bootstrap_expect = %d\n' "${#SERVER_IPS[@]}"; fi
} | put_file /etc/consul.d/node.hcl 0640 root:consul

if is_server; then
  # standbyok: an unsealed standby passes (it forwards to the active node); sealed (503) and
  # uninitialized (501) fail, so vault.service.consul only resolves to usable nodes.
  put_file /etc/consul.d/vault.hcl 0640 root:consul <<EOF
# Rendered by scripts/provision/30-consul.sh: this server's Vault in Consul's catalog.
services {
  name    = "vault"
  id      = "vault"
  address = "$NODE_IP"
  port    = 8200

  checks = [
    {
      id       = "vault-health"
      name     = "Vault HTTPS health"
      http     = "https://$NODE_IP:8200/v1/sys/health?standbyok=true&perfstandbyok=true"
      interval = "10s"
      timeout  = "2s"
    }
  ]
}
EOF
fi

# ---- state Consul keeps itself (data_dir, consul-only) --------------------------------------
ensure_dir /opt/consul 0755 consul:consul
ensure_dir "$DATA" 0700 consul:consul
ensure_dir "$DATA/serf" 0700 consul:consul
gossip="$(<"$CLUSTER/consul/gossip.key")"
keyrings=(local.keyring)
if is_server; then keyrings+=(remote.keyring); fi
for ring in "${keyrings[@]}"; do
  real="$(p "$DATA/serf/$ring")"
  if [[ ! -s $real ]]; then
    printf '["%s"]' "$gossip" | put_file "$DATA/serf/$ring" 0600 consul:consul
  elif ! grep -qF "\"$gossip\"" "$real"; then
    # Never clobbered: `consul keyring` rotations live here. A node from another cluster
    # (a recreated shared dir) cannot join this one: say so.
    warn "$DATA/serf/$ring does not hold the cluster's gossip key (another cluster's node?)"
  else
    say "unchanged $DATA/serf/$ring"
  fi
done

# Consul's own format (agent/token/persistence.go, fields in its order), so a later
# set-agent-token rewrites the same bytes.
agent="$(token_secret "$(node_dir)/consul-agent.token.json")"
dns="$(token_secret "$CLUSTER/consul/dns.token.json")"
if is_server; then
  registration="$(token_secret "$(node_dir)/consul-registration.token.json")"
  printf '{"agent":"%s","config_file_service_registration":"%s","dns":"%s"}' "$agent" "$registration" "$dns"
else
  printf '{"agent":"%s","dns":"%s"}' "$agent" "$dns"
fi | put_file "$DATA/acl-tokens.json" 0600 consul:consul

# ---- service --------------------------------------------------------------------------------
# The packaged unit (consul agent -config-dir=/etc/consul.d/, user consul) with one change:
# Type=exec instead of notify. Consul signals READY only once it has joined the LAN pool
# (agent.go, JoinLAN), and here clients come up before any server exists: `systemctl start`
# would block, time out after 90 s and kill it. The later steps wait for what they need.
put_unit_file /etc/systemd/system/consul.service.d/10-datalab.conf <<'EOF'
# scripts/provision/30-consul.sh: READY comes only after a LAN join; do not wait for it.
[Service]
Type=exec
EOF
apply_service consul "$since"
