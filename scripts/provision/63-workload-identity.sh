#!/usr/bin/env bash
# 63-workload-identity (bootstrap server): Nomad's workload identities become Consul and
# Vault logins. No Nomad agent holds a Consul or Vault token for its tasks.
#
# Consul: what `nomad setup consul` creates (command/setup_consul.go in Nomad 1.10.5), made
# idempotent and with the JWKS fetched over TLS (the cluster CA):
#   auth method nomad-workloads (jwt, Nomad's JWKS, aud consul.io; no MaxTokenTTL)
#   binding rule for services: bind-type service, bind-name ${value.nomad_service}
#   binding rule for tasks:    bind-type role, bind-name nomad-${value.nomad_namespace}-tasks
#   role nomad-default-tasks -> policy policy-nomad-tasks (read nodes, services, keys)
#
# Vault: the part of `datalab vault bootstrap` that does not need PostgreSQL (KV secrets,
# policies, JWT auth jwt-nomad/ with one role per job). The postgres and redis jobs need those
# to start, and the bootstrap's database step needs PostgreSQL: 70-deploy runs the whole
# bootstrap once they run.
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
only_on bootstrap
if dry; then
  say "dry-run: would create Consul's nomad-workloads auth method and Vault's JWT auth"
  exit 0
fi
load_management_tokens
readonly JWKS_URL="$NOMAD_HTTP/.well-known/jwks.json" # every server runs Nomad: local fetches
readonly METHOD=nomad-workloads

jwks() { api GET "$JWKS_URL" && api_ok; }
wait_until "Nomad's JWKS" 120 jwks

# ---- Consul ---------------------------------------------------------------------------------
method="$(jq -n --arg url "$JWKS_URL" --rawfile ca "$(p /etc/datalab/tls/ca.pem)" '{
  Name: "nomad-workloads", Type: "jwt", DisplayName: "nomad-workloads", TokenLocality: "local",
  Description: "Login method for Nomad workloads using workload identities",
  Config: {JWKSURL: $url, JWKSCACert: $ca, JWTSupportedAlgs: ["RS256"], BoundAudiences: ["consul.io"],
    ClaimMappings: {nomad_namespace: "nomad_namespace", nomad_job_id: "nomad_job_id",
      nomad_task: "nomad_task", nomad_service: "nomad_service"}}}')"
capi GET "/v1/acl/auth-method/$METHOD"
if [[ $API_CODE == 200 ]]; then
  if [[ "$(jq -S '{Config, TokenLocality}' <<<"$API_BODY")" == "$(jq -S '{Config, TokenLocality}' <<<"$method")" ]]; then
    say "unchanged consul auth method $METHOD"
  else
    capi PUT "/v1/acl/auth-method/$METHOD" <<<"$method"
    api_ok || die "updating consul auth method $METHOD: HTTP $API_CODE: $API_BODY"
    say "updated consul auth method $METHOD"
  fi
elif [[ $API_CODE == 404 ]]; then
  capi PUT /v1/acl/auth-method <<<"$method" # Consul fetches the JWKS to check it
  api_ok || die "creating consul auth method $METHOD: HTTP $API_CODE: $API_BODY"
  say "created consul auth method $METHOD"
else
  die "reading consul auth method $METHOD: HTTP $API_CODE: $API_BODY"
fi

# binding_rule BIND_TYPE BIND_NAME SELECTOR DESCRIPTION
binding_rule() {
  local rule
  rule="$(jq -n --arg m "$METHOD" --arg t "$1" --arg n "$2" --arg s "$3" --arg d "$4" \
    '{AuthMethod: $m, BindType: $t, BindName: $n, Selector: $s, Description: $d}')"
  capi GET "/v1/acl/binding-rules?authmethod=$METHOD"
  api_ok || die "listing binding rules: HTTP $API_CODE: $API_BODY"
  if jq -e --argjson r "$rule" 'any(.[]; .BindType == $r.BindType and .BindName == $r.BindName and .Selector == $r.Selector)' \
    <<<"$API_BODY" >/dev/null; then
    say "unchanged consul binding rule ($1 $2)"
    return 0
  fi
  capi PUT /v1/acl/binding-rule <<<"$rule"
  api_ok || die "creating binding rule ($1 $2): HTTP $API_CODE: $API_BODY"
  say "created consul binding rule ($1 $2)"
}
# shellcheck disable=SC2016 # ${value.*} are Consul's, not the shell's
binding_rule service '${value.nomad_service}' '"nomad_service" in value' "Nomad services"
# shellcheck disable=SC2016
binding_rule role 'nomad-${value.nomad_namespace}-tasks' '"nomad_service" not in value' "Nomad tasks"

consul_policy policy-nomad-tasks "Nomad tasks: read the catalog (Traefik) and KV" 'node_prefix "" {
  policy = "read"
}

service_prefix "" {
  policy = "read"
}

key_prefix "" {
  policy = "read"
}'
role="$(jq -n '{Name: "nomad-default-tasks", Description: "Role for Nomad tasks using workload identities",
  Policies: [{Name: "policy-nomad-tasks"}]}')"
capi GET /v1/acl/role/name/nomad-default-tasks
if [[ $API_CODE == 200 ]] && [[ "$(jq -c '[.Policies[]?.Name]' <<<"$API_BODY")" == '["policy-nomad-tasks"]' ]]; then
  say "unchanged consul role nomad-default-tasks"
else
  id=""
  if [[ $API_CODE == 200 ]]; then id="$(jq -r .ID <<<"$API_BODY")"; fi
  capi PUT "/v1/acl/role${id:+/$id}" <<<"$role"
  api_ok || die "writing consul role nomad-default-tasks: HTTP $API_CODE: $API_BODY"
  say "wrote consul role nomad-default-tasks"
fi

# ---- Vault ------------------------------------------------------------------------------------
# The bootstrap's own functions (services/datalab/ops/vault_bootstrap.py), without its database step.
VAULT_ADDR="$VAULT_HTTP" VAULT_CACERT="$(p /etc/datalab/tls/ca.pem)" TOKEN_FILE="$ADMIN_DIR/vault-token" \
  NOMAD_ADDR="$NOMAD_HTTP" /opt/datalab/.venv/bin/python - <<'PY'
import os
import sys

import hvac

from datalab.ops import vault_bootstrap as boot

token = open(os.environ["TOKEN_FILE"]).read().strip()
client = hvac.Client(url=os.environ["VAULT_ADDR"], token=token, verify=os.environ["VAULT_CACERT"])
if not client.is_authenticated():
    sys.exit("vault: the token in TOKEN_FILE is not valid")
report = boot.Report()
print("vault bootstrap, without the database engine (70-deploy runs it whole):", flush=True)
boot.ensure_kv(client, boot.Options(pg_admin_url=""), report)
boot.ensure_policies(client, report)
boot.ensure_edge_pki(client, boot.Options(pg_admin_url=""), report)  # the traefik job's certificate
boot.ensure_jwt_auth(client, os.environ["NOMAD_ADDR"], report)
PY

# ---- for the host: where things are (no secrets) ----------------------------------------------
cat >"$CLUSTER/host.env" <<EOF
# Source from the repo root on the host (written by scripts/provision/63-workload-identity.sh):
#   set -a; . .cluster/host.env; set +a
# Tokens are not here: vagrant ssh ${NODE} -c 'sudo jq -r .SecretID /root/.datalab/nomad-bootstrap.json'
NOMAD_ADDR=https://127.0.0.1:4646
NOMAD_CACERT=.cluster/tls/ca.pem
CONSUL_HTTP_ADDR=https://127.0.0.1:8501
CONSUL_CACERT=.cluster/tls/ca.pem
VAULT_ADDR=https://127.0.0.1:8200
VAULT_CACERT=.cluster/tls/ca.pem
DATALAB_URL=https://127.0.0.1:8443
# Traefik's certificate comes from Vault's edge CA (pki-edge), written by 70-deploy.
DATALAB_CACERT=.cluster/edge-ca.pem
EOF
say "wrote .cluster/host.env"
