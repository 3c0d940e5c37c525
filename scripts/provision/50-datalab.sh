#!/usr/bin/env bash
# 50-datalab: the project on the node.
#
# Every node: a copy of the repo's runtime files in /opt/datalab/src (root-owned, not the
# synced folder: tasks must not depend on the host's checkout, nor read the cluster secrets
# beside it) and the locked virtualenv /opt/datalab/.venv (uv.lock), the project installed from
# that copy. Servers use its `datalab` CLI (vault bootstrap, deploy); clients can run it under
# raw_exec as `datalab`, so theirs has the `embedded` extra too (the traefik binary).
#
# Clients: the Docker image the jobs run (jobs/vars/vagrant.hcl: image), built and loaded by
# scripts/build-image.
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

readonly SRC=/opt/datalab/src VENV=/opt/datalab/.venv TOOLS=/opt/datalab/tools
# What installs the project (pyproject.toml, uv.lock, README.md and services/, the package:
# the Vault policies `datalab vault bootstrap` writes are package data in it), the job files
# `datalab deploy` submits (jobs/) and the agents' configs (config/).
readonly RUNTIME_FILES=(pyproject.toml uv.lock README.md services config jobs)

ensure_dir /opt/datalab 0755 root:root
ensure_dir "$SRC" 0755 root:root

# A mirror of RUNTIME_FILES in $SRC: changed files replaced atomically, stale ones deleted,
# unchanged ones untouched (mtime kept), build output (skip) neither copied nor deleted;
# dirs 0755, files 0644, owned by whoever runs this (root on a VM). In Python, which every
# node has (10-base) and a fresh test machine too; not rsync, which a fresh machine lacks
# (the clean-room tier, scripts/cleanroom, runs `make test` on one).
sync_source() {
  local changes
  changes="$(python3 - "$REPO" "$(p "$SRC")" "${RUNTIME_FILES[@]}" <<'PY'
import filecmp, os, shutil, stat, sys
from pathlib import Path

repo, dest, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
skip = lambda p: p.name == "__pycache__" or p.name.endswith(".egg-info") or p == repo / "build"

def want(src: Path, rel: Path, out: dict) -> None:  # rel path -> source, every path kept
    if skip(src):
        return
    out[rel] = src
    if src.is_dir() and not src.is_symlink():
        for child in sorted(src.iterdir()):
            want(child, rel / child.name, out)

def same(src: Path, dst: Path, mode: int) -> bool:
    if src.is_symlink() or dst.is_symlink():
        return src.is_symlink() and dst.is_symlink() and os.readlink(src) == os.readlink(dst)
    st = dst.lstat()
    return stat.S_IMODE(st.st_mode) == mode and filecmp.cmp(src, dst, shallow=False)

wanted = {}
for name in names:
    want(repo / name, Path(name), wanted)
changes = []
for rel, src in wanted.items():  # parents before children
    dst = dest / rel
    if src.is_dir() and not src.is_symlink():
        if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
            dst.unlink()
        if not dst.is_dir():
            dst.mkdir()
            changes.append(f"+dir {rel}")
        if stat.S_IMODE(dst.stat().st_mode) != 0o755:
            dst.chmod(0o755)
            changes.append(f"mode {rel}")
        continue
    if dst.exists() or dst.is_symlink():
        if not dst.is_dir() and same(src, dst, 0o644):
            continue
        shutil.rmtree(dst) if dst.is_dir() and not dst.is_symlink() else dst.unlink()
    tmp = dst.with_name(f".sync.{dst.name}")
    if src.is_symlink():
        os.symlink(os.readlink(src), tmp)
    else:
        shutil.copyfile(src, tmp)
        tmp.chmod(0o644)
    os.replace(tmp, dst)
    changes.append(f"file {rel}")
for top in names:  # what the repo no longer has; what skip() names stays (build output)
    for base, dirs, files in os.walk(dest / top, topdown=False):
        for path in (Path(base) / n for n in files + dirs):
            rel = path.relative_to(dest)
            if rel not in wanted and not any(skip(repo / q) for q in (rel, *rel.parents)):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                changes.append(f"-del {rel}")
print("\n".join(changes))
PY
)"
  if [[ -n $changes ]]; then say "changed $SRC ($(wc -l <<<"$changes") paths)"; else say "unchanged $SRC"; fi
}
sync_source # a local copy under PROVISION_ROOT: done for real in dry-run too

# uv, pinned, in a virtualenv of its own; the project's environment from the lockfile only
# (--frozen: never re-resolved on a node), with the system Python (no downloads).
install_venv() {
  [[ -x $TOOLS/bin/uv && "$("$TOOLS/bin/uv" --version)" == "uv $UV_VERSION"* ]] || {
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  }
  local extras=()
  if is_client; then extras=(--extra embedded); fi
  (cd "$SRC" && UV_PROJECT_ENVIRONMENT="$VENV" UV_PYTHON_DOWNLOADS=never \
    "$TOOLS/bin/uv" sync --frozen --no-dev "${extras[@]}" --python /usr/bin/python3 --quiet)
  ln -sfn "$VENV/bin/datalab" /usr/local/bin/datalab
  say "virtualenv $VENV: $("$VENV/bin/datalab" --help >/dev/null && echo ok)"
}
run install_venv

# The CLIs' addresses for login shells (nomad, consul, vault/bao, datalab): TLS with the
# cluster CA. No token: those stay in root-only files on server1.
put_file /etc/profile.d/datalab.sh 0644 root:root <<'EOF'
# scripts/provision/50-datalab.sh: where this node's agents answer.
export NOMAD_ADDR=https://127.0.0.1:4646 NOMAD_CACERT=/etc/datalab/tls/ca.pem
export CONSUL_HTTP_ADDR=http://127.0.0.1:8500
export VAULT_ADDR=https://vault.service.consul:8200 VAULT_CACERT=/etc/datalab/tls/ca.pem
export BAO_ADDR="$VAULT_ADDR" BAO_CACERT="$VAULT_CACERT"
EOF

# ---- clients: the image ---------------------------------------------------------------------
is_client || exit 0
if is_container; then
  # Nothing is built on a container node: every image the var-file names (image,
  # postgres_image, redis_image, traefik_image) is loaded from the tarball scripts/cluster
  # saved from the host's Docker into $CLUSTER/images/<name_tag>.tar, with its image id in
  # <name_tag>.id: loaded when this node's Docker has another id (or none) for the tag.
  images="$(sed -n 's/^[a-z_]*image *= *"\([^"]*\)".*/\1/p' "$REPO/$VAR_FILE")"
  [[ -n $images ]] || die "no image = \"...\" in $VAR_FILE"
  for image in $images; do
    base="$CLUSTER/images/$(tr '/:' '__' <<<"$image")"
    [[ -s $base.tar && -s $base.id ]] || die "no $base.tar: scripts/cluster saves it from the host's Docker"
    if [[ "$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null)" == "$(<"$base.id")" ]]; then
      say "unchanged image $image"
      continue
    fi
    docker load --quiet --input "$base.tar" >/dev/null
    [[ "$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null)" == "$(<"$base.id")" ]] ||
      die "$base.tar did not hold $image $(<"$base.id")"
    say "image $image is loaded"
  done
  exit 0
fi
image="$(sed -n 's/^image *= *"\([^"]*\)".*/\1/p' "$REPO/jobs/vars/vagrant.hcl")"
[[ -n $image ]] || die "no image = \"...\" in jobs/vars/vagrant.hcl"
if [[ ! -f $REPO/scripts/build-image ]]; then
  warn "scripts/build-image is not in the repo (yet): image $image is NOT on $NODE, so the DataLab" \
    "jobs cannot start here. Add it, then: vagrant provision $NODE --provision-with datalab"
  exit 0
fi
# From the synced folder: it builds from the repo's Dockerfile (Docker's cache keeps a rebuild
# of unchanged sources cheap) and loads the image into this node's Docker.
run "$REPO/scripts/build-image"
if ! dry; then
  docker image inspect "$image" >/dev/null 2>&1 ||
    die "scripts/build-image ran but Docker has no $image (jobs/vars/vagrant.hcl wants it)"
  say "image $image is loaded"
fi
