#!/usr/bin/env bash
# 70-deploy (bootstrap server; the last step of `vagrant up`, or on its own:
# `vagrant provision server1 --provision-with deploy`): DataLab on the cluster, with the
# project's own tools and jobs/vars/vagrant.hcl (DATALAB_VAR_FILE: `make cluster` gives cluster.hcl):
#
# 1. wait for every client to be ready in Nomad (the Vagrantfile says how many);
# 2. `datalab deploy` Traefik, PostgreSQL and Redis (they read their secrets from Vault,
#    written by 63-workload-identity);
# 3. `datalab vault bootstrap`, whole, now that PostgreSQL runs: the database secrets engine
#    and each service's PostgreSQL role (idempotent: the rest is reported unchanged);
# 4. `datalab deploy` every job in jobs/ (the three above are unchanged).
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
only_on bootstrap
if dry; then
  say "dry-run: would deploy jobs/*.nomad.hcl with jobs/vars/vagrant.hcl"
  exit 0
fi
load_management_tokens

readonly SRC=/opt/datalab/src DATALAB=/opt/datalab/.venv/bin/datalab
readonly VARS="$SRC/$VAR_FILE" CA_FILE=/etc/datalab/tls/ca.pem
readonly VAULT_TOKEN_FILE="$ADMIN_DIR/vault-token" PG_URL_FILE="$ADMIN_DIR/pg-admin-url"
# For `datalab deploy` (python-nomad reads them); tokens only ever in this process's env.
export NOMAD_ADDR="$NOMAD_HTTP" NOMAD_CACERT="$CA_FILE" NOMAD_TOKEN="$NOMAD_MGMT"

# Ready, eligible, and with Consul and Vault fingerprinted: a client registers before its
# Consul token exists (60-consul-acl) and before Vault is unsealed, and a job whose tasks use
# them cannot be placed until the fingerprints catch up ("CANNOT PLACE
# (${attr.consul.version} semver >= 1.8.0)": seen by `make cluster`).
usable_client() { # usable_client NODE_ID
  napi GET "/v1/node/$1"
  api_ok && jq -e '.Attributes["consul.version"] and .Attributes["vault.version"]
    and .Drivers.docker.Healthy' <<<"$API_BODY" >/dev/null
}
ready_clients() {
  local ids id usable=0
  napi GET /v1/nodes
  api_ok || return 1
  ids="$(jq -r '.[] | select(.Status == "ready" and .SchedulingEligibility == "eligible") | .ID' <<<"$API_BODY")"
  for id in $ids; do
    if usable_client "$id"; then usable=$((usable + 1)); fi
  done
  ((usable >= EXPECTED_CLIENTS))
}
if ! ready_clients; then
  say "waiting for $EXPECTED_CLIENTS Nomad clients to be ready"
  SECONDS=0
  until ready_clients; do
    if ((SECONDS > 600)); then
      napi GET /v1/nodes
      die "only $(jq -r '[.[] | select(.Status == "ready") | .Name] | join(", ")' <<<"$API_BODY") ready" \
        "(with Consul, Vault and Docker fingerprinted)" \
        "of $EXPECTED_CLIENTS clients: bring them up (vagrant up), then: vagrant provision $NODE --provision-with deploy"
    fi
    sleep 5
  done
fi
say "$EXPECTED_CLIENTS Nomad clients ready (Consul, Vault, Docker)"

# The edge CA (public): what clients of Traefik's HTTPS entrypoint trust (DATALAB_CACERT).
api GET "$VAULT_HTTP/v1/pki-edge/ca/pem"
api_ok || die "reading Vault's edge CA (pki-edge/ca/pem): HTTP $API_CODE (63-workload-identity creates it)"
printf '%s\n' "$API_BODY" >"$CLUSTER/edge-ca.pem.partial"
mv -f "$CLUSTER/edge-ca.pem.partial" "$CLUSTER/edge-ca.pem"
say "wrote .cluster/edge-ca.pem (Vault's edge CA: Traefik's HTTPS certificate chains to it)"

cd "$SRC"
"$DATALAB" deploy --var-file "$VARS" jobs/traefik.nomad.hcl jobs/postgres.nomad.hcl jobs/redis.nomad.hcl

# PostgreSQL as Vault reaches it: the passing instance's address and (dynamic) port. A new
# allocation gets a new port: re-running this step points Vault at it (the bootstrap notices).
pg_instance() {
  capi GET "/v1/health/service/postgres?passing=true"
  api_ok && [[ "$(jq length <<<"$API_BODY")" -gt 0 ]]
}
wait_until "a passing postgres instance in Consul" 300 pg_instance
pg_host="$(jq -r '.[0] | "\(.Service.Address // .Node.Address):\(.Service.Port)"' <<<"$API_BODY")"

# The superuser URL, built where no argv shows it: password from Vault (kv/datalab/postgres,
# which the postgres job's template reads too) straight into a root-only file.
api GET "$VAULT_HTTP/v1/kv/data/datalab/postgres" X-Vault-Token "$(<"$VAULT_TOKEN_FILE")"
api_ok || die "reading kv/datalab/postgres: HTTP $API_CODE"
(
  umask 077
  jq -r .data.data.superuser_password <<<"$API_BODY" |
    PG_HOST="$pg_host" python3 -c 'import os, sys, urllib.parse
password = urllib.parse.quote(sys.stdin.read().strip(), safe="")
host = os.environ["PG_HOST"]
print(f"postgresql://postgres:{password}@{host}/datalab")' >"$PG_URL_FILE"
)
# Short database leases (30s, renewed by Nomad every ~20s): a revoked credential is replaced
# before requests give up waiting for it, so scripts/cluster-test's revocation fault runs
# here. `datalab vault bootstrap` defaults to 1h for production (README: lease TTLs).
"$DATALAB" vault bootstrap --vault-addr "$VAULT_HTTP" --vault-cacert "$CA_FILE" \
  --vault-token-file "$VAULT_TOKEN_FILE" --pg-admin-url-file "$PG_URL_FILE" \
  --pg-host-for-vault "$pg_host" --nomad-addr "$NOMAD_HTTP" --default-ttl 30s

"$DATALAB" deploy --var-file "$VARS" --parallel 4

cat <<EOF
DataLab is deployed. From the host (ports forwarded to 127.0.0.1; CA: .cluster/tls/ca.pem):
  Traefik   https://127.0.0.1:8443 (CA: .cluster/edge-ca.pem)   http://127.0.0.1:8080 redirects to it
  Nomad     https://127.0.0.1:4646  Consul https://127.0.0.1:8501  Vault https://127.0.0.1:8200
  tokens    vagrant ssh $NODE -c 'sudo cat /root/.datalab/{nomad,consul}-bootstrap.json'   (root only)
  checks    set -a; . .cluster/host.env; set +a; scripts/cluster-test
EOF
