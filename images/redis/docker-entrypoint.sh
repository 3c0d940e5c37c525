#!/bin/sh
# The redis image's entrypoint (images/redis/Dockerfile), as the official image's: options
# or a *.conf file as first argument run redis-server with them; redis-server started as
# root gets /data owned by redis and drops to that user. Anything else runs as given.
set -eu

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  find /data \! -user redis -exec chown redis:redis '{}' +
  exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
