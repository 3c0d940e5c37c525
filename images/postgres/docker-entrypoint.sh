#!/bin/sh
# The postgres image's entrypoint (images/postgres/Dockerfile): the part of the official
# image's interface the postgres job uses. `postgres [ARGS]` (or only options): as root, own
# $PGDATA and drop to the postgres user; on first start initdb with POSTGRES_PASSWORD for
# POSTGRES_USER (default postgres), local socket `trust`, TCP scram-sha-256 from anywhere,
# create POSTGRES_DB; then run the server listening on every address. Anything else runs
# as given (`docker run IMAGE psql --version`).
set -eu

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
  exec "$@"
fi
shift

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" postgres "$@"
fi

user="${POSTGRES_USER:-postgres}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "docker-entrypoint: no cluster in $PGDATA and POSTGRES_PASSWORD is empty: set it" >&2
    exit 1
  fi
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256
  rm -f "$pwfile"
  printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  db="${POSTGRES_DB:-$user}"
  if [ "$db" != postgres ]; then
    # Single-user mode: no server, no socket, nothing listening while the cluster is made.
    printf 'CREATE DATABASE "%s"\n' "$(printf '%s' "$db" | sed 's/"/""/g')" |
      postgres --single -D "$PGDATA" -j postgres >/dev/null
  fi
  echo "docker-entrypoint: cluster created in $PGDATA (database $db, superuser $user)"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
