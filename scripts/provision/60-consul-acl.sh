#!/usr/bin/env bash
# 60-consul-acl (bootstrap server): Consul's ACL system, once the servers have a leader.
#
# 1. `acl bootstrap`: the management token, kept root-only on this server
#    (/root/.datalab/consul-bootstrap.json, 0600) and nowhere else.
# 2. Least-privilege policies, and every node's agent tokens, created with the ids the nodes
#    pre-generated in the shared dir (30-consul, 40-nomad), so agents configured before ACLs
#    existed start working without being touched:
#      consul-agent          node identity <node>:dc1 (node:write on itself, service:read)
#      consul-dns            templated policy builtin/dns (shared by every agent's DNS)
#      consul-registration   servers: registers the `vault` service (policy vault-service)
#      nomad-consul          the Nomad agent's token (policy nomad-agent)
# Idempotent: what exists with the same rules/links is left alone.
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
only_on bootstrap
if dry; then
  say "dry-run: would bootstrap Consul's ACLs and create every node's agent tokens"
  exit 0
fi

readonly BOOT_FILE="$ADMIN_DIR/consul-bootstrap.json"
install -d -m 0700 "$ADMIN_DIR"

consul_leader() { api GET "$CONSUL_HTTP/v1/status/leader" && api_ok && [[ $API_BODY == '"'?*'"' ]]; }
wait_until "a Consul leader (all ${#SERVER_IPS[@]} servers up)" 600 consul_leader

if [[ ! -s $BOOT_FILE ]]; then
  api PUT "$CONSUL_HTTP/v1/acl/bootstrap" </dev/null
  if [[ $API_CODE == 403 ]]; then
    die "Consul's ACLs were bootstrapped already, but $BOOT_FILE is gone: its management token" \
      "is lost. Reset (https://developer.hashicorp.com/consul/docs/secure/acl/reset) or rebuild the cluster."
  fi
  api_ok || die "consul acl bootstrap: HTTP $API_CODE: $API_BODY"
  (umask 077 && printf '%s\n' "$API_BODY" >"$BOOT_FILE")
  say "created Consul's management token ($BOOT_FILE, root-only)"
else
  say "unchanged Consul ACL bootstrap ($BOOT_FILE)"
fi
CONSUL_MGMT="$(jq -r .SecretID "$BOOT_FILE")"
capi GET /v1/acl/token/self
api_ok || die "the management token in $BOOT_FILE is not valid here (HTTP $API_CODE): another cluster's?"

# What Nomad agents need of Consul (developer.hashicorp.com/nomad/docs/secure/acl/consul):
# register themselves and deregister their tasks' services (those register with their own
# workload-identity tokens), discover the servers. No `acl = "write"` nor `mesh = "write"`:
# those serve Consul service mesh (Connect), which DataLab does not use.
consul_policy nomad-agent "Nomad agents (scripts/provision/60-consul-acl.sh)" 'agent_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "write"
}
service_prefix "" {
  policy = "write"
}'
consul_policy vault-service "Servers register the vault service (scripts/provision/60-consul-acl.sh)" 'service "vault" {
  policy = "write"
}'

consul_token "$CLUSTER/consul/dns.token.json" "DNS of every agent" '{"TemplatedPolicies": [{"TemplateName": "builtin/dns"}]}'
for record in "$CLUSTER"/nodes/*/node.json; do
  name="$(jq -r .name "$record")"
  role="$(jq -r .role "$record")"
  dir="$(dirname "$record")"
  consul_token "$dir/consul-agent.token.json" "consul agent $name" \
    "$(jq -n --arg n "$name" --arg dc "$DATACENTER" '{NodeIdentities: [{NodeName: $n, Datacenter: $dc}]}')"
  if [[ $role == server ]]; then
    consul_token "$dir/consul-registration.token.json" "vault service of $name" '{"Policies": [{"Name": "vault-service"}]}'
  fi
  if [[ -s $dir/nomad-consul.token.json ]]; then
    consul_token "$dir/nomad-consul.token.json" "nomad agent $name" '{"Policies": [{"Name": "nomad-agent"}]}'
  else
    warn "$name has no nomad-consul token yet (40-nomad has not run there): re-run this step after it"
  fi
done
