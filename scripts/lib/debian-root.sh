#!/usr/bin/env bash
# A minimal Debian root (debootstrap --variant=minbase), built once per suite, architecture,
# package list and mirror and cached as a tarball. Sourced by scripts/cleanroom (the root
# `make test` runs in) and scripts/build-images (the base of the local images).
#
#   debian_root_tarball CACHE_DIR SUITE PACKAGES [MIRROR]   # prints the tarball's path
#
# MIRROR defaults to the one apt already uses (deb822 .sources or one-line lists). Needs
# root; installs debootstrap (Debian's package) when it is missing. Progress goes to stderr.

debian_root_say() { printf '==> %s: %s\n' "${DEBIAN_ROOT_WHO:-debian-root}" "$*" >&2; }

# The first non-security mirror of /etc/apt/sources.list*, or nothing.
debian_root_mirror() {
  local m
  m="$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1)" || true
  [[ -n $m ]] || m="$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    grep -v security | head -n1)" || true
  printf '%s' "$m"
}

# apt-get install PACKAGE... (no recommends), with an `apt-get update` when the lists are stale.
debian_root_apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

debian_root_tarball() {
  local cache=$1 suite=$2 packages=$3 mirror=${4:-}
  [[ -n $mirror ]] || mirror="$(debian_root_mirror)"
  [[ -n $mirror ]] || { echo "no Debian mirror in /etc/apt/sources.list*: pass one" >&2; return 1; }
  local key tarball
  key="$(printf '%s %s minbase %s %s' "$suite" "$(dpkg --print-architecture 2>/dev/null || uname -m)" "$packages" "$mirror" |
    sha256sum | cut -c1-16)"
  tarball="$cache/root-$suite-$key.tar.gz"
  if [[ -s $tarball ]]; then
    debian_root_say "root from cache: $tarball"
    printf '%s\n' "$tarball"
    return 0
  fi
  command -v debootstrap >/dev/null 2>&1 || {
    debian_root_say "installing debootstrap (Debian's package)"
    debian_root_apt_install debootstrap || return 1
  }
  local tmp start=$SECONDS
  tmp="$(mktemp -d /var/tmp/datalab-debian-root.XXXXXX)"
  debian_root_say "building the root: debootstrap --variant=minbase --include=$packages $suite ($mirror)"
  if ! debootstrap --variant=minbase --include="$packages" "$suite" "$tmp/root" "$mirror" >"$tmp/debootstrap.log" 2>&1; then
    tail -n 30 "$tmp/debootstrap.log" >&2
    rm -rf --one-file-system "$tmp"
    echo "debootstrap failed" >&2
    return 1
  fi
  rm -rf "$tmp/root/var/cache/apt/archives/"*.deb "$tmp/root/var/lib/apt/lists/"*
  mkdir -p "$cache"
  tar -C "$tmp/root" --numeric-owner -czf "$tarball.part" .
  mv -f "$tarball.part" "$tarball"
  rm -rf --one-file-system "$tmp"
  debian_root_say "root built and cached in $((SECONDS - start)) s: $tarball"
  printf '%s\n' "$tarball"
}
