#!/bin/sh
# The redis image's entrypoint (images/redis/Dockerfile), as the official image's: options
# or a *.conf file as first argument run redis-server with them; redis-server started as
# root gets /data owned by redis and drops to that user. Anything else runs as given.
set -eu

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi
# Redis 7.0 (Debian bookworm's) has no CLIENT SETINFO (7.2+), and an ACL naming it is fatal
# there ("Error loading ACL rule '+client|setinfo'": seen by `make cluster`). The rule grants
# nothing such a server has (redis-py ignores the command's error), so a copy of the config
# without it runs. Any other server runs the config as it is.
if [ "$1" = redis-server ] && [ "${2:-}" != "${2%.conf}" ] && grep -q 'client|setinfo' "$2" &&
  redis-server --version | grep -q ' v=7\.[01]\.'; then
  conf=/tmp/redis-7.0.conf
  sed 's/ +client|setinfo//g' "$2" >"$conf"
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
