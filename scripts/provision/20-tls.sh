#!/usr/bin/env bash
# 20-tls: the cluster CA (made once, by the first node provisioned, in the shared dir) and
# this node's certificates for Consul, Nomad and, on servers, Vault, signed by it. A
# certificate is reissued only when it is missing, not from this CA, for other names, about to
# expire or not matching its key; otherwise nothing is written. The CA also joins the system
# trust store: Vault and Consul fetch Nomad's JWKS over TLS with the system roots.
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

readonly CA_DIR="$CLUSTER/tls" CA="$CLUSTER/tls/ca.pem" CA_KEY="$CLUSTER/tls/ca-key.pem"
readonly LEAF_DAYS=365 RENEW_BEFORE=$((30 * 86400))
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

ossl() { # openssl, quiet unless it fails
  openssl "$@" 2>"$WORK/openssl.err" || die "openssl $1 failed: $(<"$WORK/openssl.err")"
}

ensure_ca() {
  if [[ -s $CA && -s $CA_KEY ]]; then
    say "unchanged tls/ca.pem (kept)"
    return 0
  fi
  [[ ! -e $CA && ! -e $CA_KEY ]] ||
    die "half a CA in $CA_DIR: restore the missing file, or remove both (a new cluster)"
  mkdir -p "$CA_DIR"
  chmod 0700 "$CA_DIR" 2>/dev/null || true # vboxsf: modes come from the mount
  cat >"$WORK/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
x509_extensions = ca
prompt = no
[dn]
CN = DataLab cluster CA (Vagrant, dev-grade)
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
  (
    umask 077
    ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$CA_KEY.tmp"
  )
  ossl req -x509 -new -config "$WORK/ca.cnf" -key "$CA_KEY.tmp" -sha256 -days 3650 -out "$CA.tmp"
  mv -f "$CA_KEY.tmp" "$CA_KEY"
  mv -f "$CA.tmp" "$CA"
  say "created tls/ca.pem (10 years)"
}

# The names a certificate carries, one per line, sorted: "DNS:x" and "IP:y".
sans_of() {
  openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr ',' '\n' |
    sed -e 's/^ *//' -e 's/^IP Address:/IP:/' -e '/^$/d' | sort
}

# issue TOOL NAME CN GROUP SAN...: /etc/TOOL.d/tls/NAME.pem and NAME-key.pem (0640, GROUP).
issue() {
  local tool=$1 name=$2 cn=$3 group=$4
  shift 4
  local dir="/etc/$tool.d/tls" cert key wanted reason="" sans
  cert="$(p "$dir/$name.pem")"
  key="$(p "$dir/$name-key.pem")"
  wanted="$(printf '%s\n' "$@" | sort)"
  if [[ ! -s $cert || ! -s $key ]]; then
    reason="none yet"
  elif ! openssl verify -CAfile "$CA" "$cert" >/dev/null 2>&1; then
    reason="not signed by the cluster CA"
  elif [[ "$(sans_of "$cert")" != "$wanted" ]]; then
    reason="its names changed"
  elif ! openssl x509 -in "$cert" -noout -checkend "$RENEW_BEFORE" >/dev/null; then
    reason="it expires within 30 days"
  elif [[ "$(openssl x509 -in "$cert" -noout -pubkey)" != "$(openssl pkey -in "$key" -pubout)" ]]; then
    reason="it does not match its key"
  fi
  ensure_dir "/etc/$tool.d" 0755 root:root
  ensure_dir "$dir" 0750 "root:$group"
  copy_file "$CA" "$dir/ca.pem" 0644 root:root
  if [[ -z $reason ]]; then # kept: put_file only checks the modes and owners
    put_file "$dir/$name.pem" 0644 root:root <"$cert"
    put_file "$dir/$name-key.pem" 0640 "root:$group" <"$key"
    return 0
  fi
  say "issuing the $tool $name certificate ($reason)"
  sans="$(printf '%s\n' "$@" | paste -sd, -)"
  cat >"$WORK/leaf.cnf" <<EOF
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = $sans
EOF
  ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/key.pem"
  ossl req -new -key "$WORK/key.pem" -subj "/CN=$cn" -out "$WORK/csr.pem"
  ossl x509 -req -in "$WORK/csr.pem" -CA "$CA" -CAkey "$CA_KEY" -set_serial "0x$(openssl rand -hex 16)" \
    -days "$LEAF_DAYS" -sha256 -extfile "$WORK/leaf.cnf" -extensions leaf -out "$WORK/cert.pem"
  put_file "$dir/$name-key.pem" 0640 "root:$group" <"$WORK/key.pem"
  put_file "$dir/$name.pem" 0644 root:root <"$WORK/cert.pem"
}

ensure_ca

# Names the agents check: Consul and Nomad verify servers by role names (verify_server_hostname:
# server.<datacenter>.consul, server.<region>.nomad), every agent by the CA; the UIs and CLIs
# come in through localhost / 127.0.0.1 (forwarded ports) or the node's IP.
local_names=(DNS:localhost IP:127.0.0.1 "IP:$NODE_IP")
# issue_for UNIT ISSUE-ARGS...: a reissued certificate owes UNIT a restart (in its own step).
issue_for() {
  local unit=$1 before
  shift
  before="$(mark)"
  issue "$@"
  if changed_since "$before"; then owe_restart "$unit"; fi
}

if is_server; then
  issue_for consul consul server "server.$DATACENTER.consul" consul "DNS:server.$DATACENTER.consul" "${local_names[@]}"
  issue_for nomad nomad server server.global.nomad nomad DNS:server.global.nomad DNS:nomad.service.consul "${local_names[@]}"
  issue_for "$VAULT_UNIT" vault server vault.service.consul "$VAULT_USER" DNS:vault.service.consul \
    DNS:active.vault.service.consul "DNS:$NODE" "${local_names[@]}"
else
  issue_for consul consul client "client.$DATACENTER.consul" consul "DNS:client.$DATACENTER.consul" "${local_names[@]}"
  issue_for nomad nomad client client.global.nomad nomad DNS:client.global.nomad "${local_names[@]}"
fi

# The CA for our own API calls and CLIs (/etc/datalab/tls/ca.pem), and for every program on
# the node through the system store.
ensure_dir /etc/datalab/tls 0755 root:root
mark_trust="$(mark)"
copy_file "$CA" /etc/datalab/tls/ca.pem 0644 root:root
copy_file "$CA" /usr/local/share/ca-certificates/datalab-cluster-ca.crt 0644 root:root
if changed_since "$mark_trust"; then run update-ca-certificates; fi
