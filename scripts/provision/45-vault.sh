#!/usr/bin/env bash
# 45-vault: Vault (or OpenBao, DATALAB_VAULT=openbao: same API, same config) on the servers:
# integrated storage (raft) across the servers, TLS from the cluster CA.
#
# /etc/vault.d/vault.hcl   config/vault/server.hcl, copied as is
# /etc/vault.d/node.hcl    this node's part: api_addr, cluster_addr, storage "raft" (node_id,
#                          retry_join to the other servers). Vault merges files: the storage
#                          block here replaces the base one whole; listeners would add up, so
#                          the listener stays in the base file only.
#
# Init and unseal happen on the bootstrap server (62-vault-unseal), once every server runs.
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
only_on server

readonly DATA=/opt/vault/data # storage "raft" path in config/vault/server.hcl
since="$(mark)"

ensure_dir /etc/vault.d 0755 root:root
copy_file "$REPO/config/vault/server.hcl" /etc/vault.d/vault.hcl 0640 "root:$VAULT_USER"
{
  printf '# Rendered by scripts/provision/45-vault.sh for %s: re-provisioning rewrites it.\n' "$NODE"
  printf 'api_addr     = "https://%s:8200"\n' "$NODE_IP"
  printf 'cluster_addr = "https://%s:8201"\n\n' "$NODE_IP"
  printf 'storage "raft" {\n  path    = "%s"\n  node_id = "%s"\n' "$DATA" "$NODE"
  for ip in "${SERVER_IPS[@]}"; do
    [[ $ip != "$NODE_IP" ]] || continue
    printf '\n  retry_join {\n    leader_api_addr     = "https://%s:8200"\n' "$ip"
    printf '    leader_ca_cert_file = "/etc/vault.d/tls/ca.pem"\n  }\n'
  done
  printf '}\n'
} | put_file /etc/vault.d/node.hcl 0640 "root:$VAULT_USER"

ensure_dir /opt/vault 0755 root:root
ensure_dir "$DATA" 0700 "$VAULT_USER:$VAULT_USER"

# The packaged unit (vault.service, or openbao.service: user, hardening, EnvironmentFile),
# started with our two files instead of the package's single one.
put_unit_file "/etc/systemd/system/$VAULT_UNIT.service.d/10-datalab.conf" <<EOF
# scripts/provision/45-vault.sh: config/vault/server.hcl plus this node's part.
[Unit]
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=
ExecStart=$VAULT_BIN server -config=/etc/vault.d/vault.hcl -config=/etc/vault.d/node.hcl
EOF
apply_service "$VAULT_UNIT" "$since"
