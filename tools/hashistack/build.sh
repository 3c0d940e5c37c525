#!/usr/bin/env bash
# Build Consul and/or Nomad from Go modules (via the Go module proxy) into
# tools/hashistack/bin/. Idempotent: a binary already built from the same
# go.mod + go.sum + Go version + build flags is not rebuilt.
#
# Usage: tools/hashistack/build.sh [nomad|consul|all]...   (default: all)
# Env:
#   GO               go binary (default: `go` on PATH, else /usr/local/go/bin/go)
#   GOMODCACHE/GOCACHE  honoured as usual (defaults: ~/go/pkg/mod, ~/.cache/go-build)
#   HASHISTACK_FORCE=1  rebuild even if the stamp matches
#   HASHISTACK_NICE     nice level for go commands (default 19)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="$HERE/bin"
NICE="${HASHISTACK_NICE:-19}"

if [[ -n "${GO:-}" ]]; then
  :
elif command -v go >/dev/null 2>&1; then
  GO="$(command -v go)"
elif [[ -x /usr/local/go/bin/go ]]; then
  GO=/usr/local/go/bin/go
else
  echo "build.sh: no Go toolchain found (set GO=/path/to/go)" >&2
  exit 1
fi

# Release metadata, used for `version` output (-ldflags -X ...). Must match
# the version required in <tool>/go.mod; the script checks that.
release_info() {
  case "$1" in
    nomad)
      MOD=github.com/hashicorp/nomad
      VERSION=v1.10.5
      COMMIT=a3b86c697f38ab032e1acaae8503ed10815bc4a2
      DATE=2025-09-09T14:36:45Z
      CGO=1
      TAGS=hashicorpmetrics
      ;;
    consul)
      MOD=github.com/hashicorp/consul
      VERSION=v1.22.0
      COMMIT=7926532a57aad0a4286a78e0afecf2c11402240c
      DATE=2025-10-27T07:52:41Z
      CGO=0
      TAGS=
      ;;
    *)
      echo "build.sh: unknown tool '$1' (expected nomad, consul or all)" >&2
      exit 2
      ;;
  esac
}

build_one() {
  local tool="$1"
  local moddir="$HERE/$tool"
  local out="$BIN/$tool"
  local stamp="$BIN/.$tool.stamp"
  release_info "$tool"

  local have
  have="$(cd "$moddir" && GOFLAGS='' "$GO" list -mod=readonly -m -f '{{.Version}}' "$MOD")"
  if [[ "$have" != "$VERSION" ]]; then
    echo "build.sh: $moddir/go.mod selects $MOD $have, not $VERSION; update release_info() in build.sh" >&2
    exit 1
  fi

  local ldflags="-X $MOD/version.GitCommit=$COMMIT -X $MOD/version.BuildDate=$DATE"
  local -a args=(build -trimpath -buildvcs=false -mod=readonly -ldflags "$ldflags")
  if [[ -n "$TAGS" ]]; then
    args+=(-tags "$TAGS")
  fi

  local want
  want="$(
    {
      cat "$moddir/go.mod" "$moddir/go.sum"
      "$GO" version
      printf 'CGO_ENABLED=%s %s\n' "$CGO" "${args[*]}"
    } | sha256sum | cut -d' ' -f1
  )"

  if [[ "${HASHISTACK_FORCE:-0}" != 1 && -x "$out" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "==> $tool: up to date ($out)"
    return 0
  fi

  echo "==> $tool: building $MOD@$VERSION (CGO_ENABLED=$CGO${TAGS:+, tags $TAGS})"
  mkdir -p "$BIN"
  local start=$SECONDS
  (
    cd "$moddir"
    # GOFLAGS from the environment or `go env -w` could add -mod=mod etc.; keep ours.
    GOFLAGS='' CGO_ENABLED="$CGO" nice -n "$NICE" "$GO" "${args[@]}" -o "$out.tmp" "$MOD"
  )
  mv -f "$out.tmp" "$out"
  printf '%s\n' "$want" >"$stamp"
  echo "==> $tool: built in $((SECONDS - start))s"
}

tools=("$@")
if [[ ${#tools[@]} -eq 0 ]]; then
  tools=(all)
fi
selected=()
for t in "${tools[@]}"; do
  case "$t" in
    all) selected+=(nomad consul) ;;
    -h | --help)
      sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) selected+=("$t") ;;
  esac
done

for t in "${selected[@]}"; do
  build_one "$t"
done

for t in "${selected[@]}"; do
  echo "==> $BIN/$t version"
  "$BIN/$t" version
done
