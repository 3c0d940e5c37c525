# syntax=docker/dockerfile:1.17
#
# The DataLab service image: one image for every service and the workers, the way the
# Nomad docker driver runs them (jobs/*.nomad.hcl: args = ["serve", "data"], ["worker"]).
#
#   scripts/build-image                      # -> datalab:<version in pyproject.toml>
#   docker run --rm -p 8000:8000 datalab:0.1.0 serve viz
#
# Stages from the same pinned Python image (the virtualenv's interpreter path must be the
# same in all): `builder` has a pinned uv, `deps` the locked dependencies, `project` the
# project on top; `runtime` gets only that virtualenv, as two layers. No compiler, no uv,
# no pip, no dev group and no `embedded` extra (Traefik, Valkey, PostgreSQL and OpenBao
# run as their own jobs) in it.
# Every wheel in uv.lock bundles its native libraries (scikit-learn its libgomp, numpy and
# scipy OpenBLAS, Pillow freetype/libpng, matplotlib its DejaVu fonts, polars is static):
# they need only libc, libstdc++, libgcc_s and zlib, which the slim image has
# (tests/jobs/test_image.py checks every shared object of the environment).
#
# PYTHON_IMAGE, the base of every stage: to pin the digest as well, pass
#   --base-image python:3.11.14-slim-bookworm@sha256:<digest>   (scripts/build-image)
# with the digest from `docker buildx imagetools inspect python:3.11.14-slim-bookworm`.
# Where no registry answers, scripts/build-images builds the base from Debian packages
# (debootstrap: Debian's python3 3.11 with python3-venv, imported as datalab-base:bookworm,
# python3 linked into /usr/local/bin as in the python image) and passes it here; every step
# below works on both.
#
# The build reaches PyPI (uv, the locked wheels). Behind a TLS proxy, give it the CA bundle
# as the BuildKit secret `ca-bundle` (--secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt,
# what scripts/build-images passes): mounted for the RUNs that download, in no layer.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: the base image with a pinned uv ---------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# The uv that `make install` puts in .tools/uv (tests/jobs/test_image.py runs the same
# install with it). From PyPI, like everything else the project installs, into a virtualenv
# of its own (the base's Python may have no pip: Debian's has none), linked onto PATH.
# CA_BUNDLE: where the `ca-bundle` secret is mounted; used when one was given.
ARG UV_VERSION=0.13.9
ENV CA_BUNDLE=/run/secrets/ca-bundle
RUN --mount=type=secret,id=ca-bundle \
    if [ -s "$CA_BUNDLE" ]; then export PIP_CERT="$CA_BUNDLE"; fi \
    && python3 -m venv /opt/uv \
    && /opt/uv/bin/python -m pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
        "uv==${UV_VERSION}" \
    && ln -s /opt/uv/bin/uv /usr/local/bin/uv

# The system interpreter of the base image (no managed Python download), bytecode compiled
# at build time (the environment is read-only at run time), files copied out of the cache
# mount rather than hard-linked to it.
ENV UV_PYTHON=python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/datalab \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /src

# ---- deps: the locked dependencies alone in /opt/datalab ----------------------------------
# Rebuilt only when uv.lock or pyproject.toml change; in the image it is its own layer, so a
# source change ships a layer of about 1 MB, not the whole ~600 MB environment.
FROM builder AS deps
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    --mount=type=secret,id=ca-bundle \
    if [ -s "$CA_BUNDLE" ]; then export SSL_CERT_FILE="$CA_BUNDLE"; fi \
    && uv sync --frozen --no-dev --no-editable --no-install-project

# The libraries' own test suites (scipy, scikit-learn, numpy...: ~100 MB with their
# bytecode) are never imported by the services.
RUN find "$UV_PROJECT_ENVIRONMENT/lib" -mindepth 4 -type d \( -name tests -o -name test \) \
        -prune -exec rm -rf {} +

# ---- project: the datalab distribution, installed as a wheel (not editable) --------------
# The runtime part of it: .dockerignore keeps datalab/ops and datalab/devstack (operators'
# and developers' commands) out of the context, so out of the wheel and the image.
FROM deps AS project
COPY pyproject.toml uv.lock README.md ./
COPY services ./services
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=secret,id=ca-bundle \
    if [ -s "$CA_BUNDLE" ]; then export SSL_CERT_FILE="$CA_BUNDLE"; fi \
    && uv sync --frozen --no-dev --no-editable

# Only what that sync added to the environment (the package, its metadata, the `datalab`
# command), laid out as in the environment: the runtime stage copies it over the deps.
ENV STAGING=/staging
RUN sp=lib/python3.11/site-packages \
    && mkdir -p "$STAGING/bin" "$STAGING/$sp" \
    && cp -a "$UV_PROJECT_ENVIRONMENT/bin/datalab" "$STAGING/bin/" \
    && cp -a "$UV_PROJECT_ENVIRONMENT/$sp/datalab" "$UV_PROJECT_ENVIRONMENT/$sp"/datalab-*.dist-info \
        "$STAGING/$sp/"

# ---- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# The unprivileged user the tasks run as: jobs/vars/*.hcl run_as_uid/run_as_gid (the docker
# task's `user`, owner of the rendered secrets/). /srv/datalab is the data volume (datasets,
# models): the Nomad host volume `datalab` is mounted there, owned by 10001 on the clients.
# pip, setuptools and wheel leave the image (where the base has them): nothing is installed
# at run time and the application's environment is the virtualenv below, which never sees them.
RUN if python3 -m pip --version >/dev/null 2>&1; then \
        python3 -m pip uninstall --yes --no-cache-dir --root-user-action=ignore pip setuptools wheel; \
    fi \
    && groupadd --system --gid 10001 datalab \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --create-home \
        --home-dir /home/datalab --shell /usr/sbin/nologin datalab \
    && install -d -o 10001 -g 10001 -m 0750 /srv/datalab

# Docker HEALTHCHECK (Nomad ignores it and uses its Consul checks): stdlib only, no curl.
COPY --chmod=0755 <<'EOF' /usr/local/bin/datalab-healthcheck
#!/usr/local/bin/python3 -I
"""Healthy when the command in this container answers.

`datalab serve <service>`: GET /health on $DATALAB_PORT. `datalab worker`: GET /metrics
on $DATALAB_WORKER_METRICS_PORT; a worker without one (compute-batch's one-job runs)
has nothing to probe and counts as healthy.
"""
import http.client
import os
import sys

CMDLINE = "/proc/1/cmdline"


def main() -> int:
    try:
        with open(CMDLINE, "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        argv = []
    if b"worker" in argv:
        port, path = os.environ.get("DATALAB_WORKER_METRICS_PORT", ""), "/metrics"
        if not port:
            return 0
    else:
        port, path = os.environ.get("DATALAB_PORT", "8000"), "/health"
    host = os.environ.get("DATALAB_HOST", "")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=3)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
    except (OSError, ValueError, http.client.HTTPException) as exc:
        print(f"unhealthy: {host}:{port}{path}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {host}:{port}{path}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


sys.exit(main())
EOF

# Owned by root: the application cannot change its own code. The dependencies first (a
# layer that changes with uv.lock only), then the project's own files.
COPY --from=deps /opt/datalab /opt/datalab
COPY --from=project /staging/ /opt/datalab/

# DATALAB_HOST/PORT/HOME are what the jobs set too (Nomad's values win); MPLCONFIGDIR holds
# matplotlib's font cache, built below so that no container start rebuilds it.
ENV PATH=/opt/datalab/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    MPLCONFIGDIR=/home/datalab/.cache/matplotlib \
    DATALAB_HOST=0.0.0.0 \
    DATALAB_PORT=8000 \
    DATALAB_HOME=/srv/datalab

USER 10001:10001
RUN python -c "import matplotlib.font_manager" \
    && datalab --help >/dev/null

WORKDIR /srv/datalab
VOLUME ["/srv/datalab"]
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/datalab-healthcheck"]
ENTRYPOINT ["datalab"]
CMD ["--help"]

# Last, so that a new revision or date changes only the image's metadata, no layer.
ARG PYTHON_IMAGE
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="datalab" \
      org.opencontainers.image.description="DataLab services (gateway, data, ai, compute, viz) and RQ workers: datalab serve <service> | datalab worker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
