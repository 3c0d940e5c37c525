#!/bin/sh
# The redis image's entrypoint (images/redis/Dockerfile), as the official image's: options
# or a *.conf file as first argument run redis-server with them; redis-server started as
# root gets /data owned by redis and drops to that user. Anything else runs as given.
set -eu

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi
# A config file runs as a copy that starts with `protected-mode no`, the official image's
# compiled-in default (its Dockerfile patches it): DataLab's ACL turns the default user off,
# which Redis 7.0 still counts as "no password", so protected mode would refuse every
# non-loopback client ("DENIED Redis is running in protected mode": seen by `make cluster`).
# The file's own setting, if any, comes later and wins. Redis 7.0 (Debian bookworm's) has no
# CLIENT SETINFO (7.2+) and an ACL rule naming it is fatal there ("Error loading ACL rule
# '+client|setinfo'"): the rule grants nothing such a server has (redis-py ignores the
# command's error), so the copy leaves it out.
if [ "$1" = redis-server ] && [ "${2:-}" != "${2%.conf}" ] && [ -r "$2" ]; then
  conf=/tmp/datalab-redis.conf
  {
    echo "protected-mode no"
    if redis-server --version | grep -q ' v=7\.[01]\.'; then sed 's/ +client|setinfo//g' "$2"; else cat "$2"; fi
  } >"$conf"
  chmod 0400 "$conf"
  chown redis:redis "$conf" 2>/dev/null || true
  shift 2
  set -- redis-server "$conf" "$@"
fi
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  find /data \! -user redis -exec chown redis:redis '{}' +
  exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
