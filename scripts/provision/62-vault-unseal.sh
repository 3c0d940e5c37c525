#!/usr/bin/env bash
# 62-vault-unseal (bootstrap server; runs on every `vagrant up`, Vault seals when it stops):
# initializes Vault once, then unseals every server's Vault over the API. The other servers
# join this one's raft cluster (retry_join in 45-vault) as they are unsealed.
#
#   ###########################################################################################
#   #  DEV-GRADE KEY HANDLING - NOT FOR PRODUCTION.                                           #
#   #  One unseal key share (threshold 1) and the root token are kept together, root-only,   #
#   #  in /root/.datalab/vault-init.json on this server, and the root token is what the       #
#   #  bootstrap steps use. Whoever is root here owns Vault. In production: several shares    #
#   #  held by different people (or auto-unseal with a KMS/HSM), the root token revoked after #
#   #  setup, and an admin policy instead.                                                    #
#   ###########################################################################################
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
only_on bootstrap
if dry; then
  say "dry-run: would initialize Vault (1 key share) and unseal ${SERVER_IPS[*]}"
  exit 0
fi

readonly INIT_FILE="$ADMIN_DIR/vault-init.json" TOKEN_FILE="$ADMIN_DIR/vault-token"
install -d -m 0700 "$ADMIN_DIR"

seal_status() { api GET "https://$1:8200/v1/sys/seal-status" && api_ok; } # seal_status IP
wait_until "Vault on this server" 120 seal_status "$NODE_IP"

if [[ "$(jq -r .initialized <<<"$API_BODY")" == false ]]; then
  [[ ! -s $INIT_FILE ]] || die "Vault is not initialized but $INIT_FILE exists (an earlier cluster's):" \
    "move it away to initialize this one"
  jq -n '{secret_shares: 1, secret_threshold: 1}' | api PUT "$VAULT_HTTP/v1/sys/init"
  api_ok || die "vault operator init: HTTP $API_CODE: $API_BODY"
  (umask 077 && printf '%s\n' "$API_BODY" >"$INIT_FILE")
  warn "Vault initialized with ONE key share: unseal key and root token are in $INIT_FILE" \
    "(root-only). DEV-GRADE, NOT FOR PRODUCTION (see scripts/provision/62-vault-unseal.sh)."
else
  say "unchanged Vault init ($INIT_FILE)"
fi
[[ -s $INIT_FILE ]] || die "Vault is initialized but $INIT_FILE is missing: unseal it by hand"

# unsealed IP: true once that Vault is unsealed; sends the key (from the file, through a pipe)
# while it is sealed. A server still joining the raft cluster needs it to answer the leader's
# challenge, so it may take a few rounds.
unsealed() {
  seal_status "$1" || return 1
  [[ "$(jq -r .sealed <<<"$API_BODY")" == true ]] || return 0
  # The init answer holds the shares as "keys" (hex) and "keys_base64".
  jq '{key: .keys_base64[0]}' "$INIT_FILE" | api PUT "https://$1:8200/v1/sys/unseal"
  api_ok && [[ "$(jq -r .sealed <<<"$API_BODY")" == false ]]
}
for ip in "$NODE_IP" "${SERVER_IPS[@]}"; do # this server first: it leads a new cluster
  wait_until "Vault on $ip to be unsealed" 300 unsealed "$ip"
  say "Vault on $ip is unsealed"
done

active() { api GET "$VAULT_HTTP/v1/sys/health?standbyok=true" && [[ $API_CODE == 200 ]]; }
wait_until "an active Vault" 120 active
(umask 077 && jq -r .root_token "$INIT_FILE" >"$TOKEN_FILE.tmp" && mv -f "$TOKEN_FILE.tmp" "$TOKEN_FILE")
