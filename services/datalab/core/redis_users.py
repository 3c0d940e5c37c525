"""Redis/Valkey ACL users: one per service, each with only the keys, channels and commands
its code uses. The one table every way DataLab runs renders its ACL from (the embedded
Valkey's config, `datalab vault bootstrap`'s kv/datalab/redis-server for the redis job).

Why it matters: whoever can write `rq:*` can enqueue a job the worker runs, and the worker
holds the platform's admin API key. So only compute (the API) and worker hold `rq:*`; the
web services cannot read or write it, nor each other's keys, nor run FLUSHALL, CONFIG, EVAL,
KEYS, DEBUG... The `default` user is off: a connection without a user name gets nothing.

A new key prefix or command a service needs goes here, or it fails with NOPERM in the
tests (they run every service with its own user). Prefer `dl:<service>:...` for new keys:
each service already owns that namespace.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from . import events
from .services import SERVICES

# Every client: redis-py's health check (PING) and the library name it sends on connect.
_CONNECTION = ("+ping", "+client|setinfo")
# Plain reads/writes and MULTI/EXEC on the user's own keys (the key patterns do the rest).
_STRINGS = ("+get", "+set", "+expire", "+ttl", "+exists", "+del", "+unlink", "+multi", "+exec", "+discard")
_SETS = ("+sadd", "+smembers")
_SUBSCRIBER = ("+subscribe", "+unsubscribe", "+punsubscribe")
# RQ issues dozens of commands over the data-type categories; its keyspace is `rq:*`. Never
# the dangerous or admin ones (FLUSHALL, CONFIG, KEYS, DEBUG, MONITOR, CLIENT LIST/KILL...),
# nor SCAN/RANDOMKEY (they list every service's key names). Lua only as redis-py's Script
# runs it (SCRIPT LOAD/EXISTS, EVALSHA; never EVAL, FUNCTION, SCRIPT FLUSH/KILL): RQ's
# scheduler lock and redis-py's Lock (compute's per-user submit lock) are scripts. A script
# runs with the caller's rights: it reaches no key the user could not.
_RQ = ("+@read", "+@write", "+@keyspace", "+@list", "+@hash", "+@set", "+@sortedset", "+@string",
       "+@stream", "+@transaction", "+@pubsub", "-@dangerous", "-@admin", "-@scripting",
       "-scan", "-randomkey", "+evalsha", "+script|load", "+script|exists",
       "+info")  # RQ reads the server version once per connection to pick its commands


@dataclass(frozen=True)
class RedisUser:
    name: str
    keys: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()

    def rules(self) -> str:
        """The ACL rules after `user <name> on #<hash>`: reset first, so nothing is inherited."""
        parts = ["resetkeys", *(f"~{k}" for k in self.keys), "resetchannels", *(f"&{c}" for c in self.channels),
                 "-@all", *_CONNECTION, *self.commands]
        return " ".join(parts)


USERS: dict[str, RedisUser] = {u.name: u for u in (
    # Rate-limit windows (INCR+EXPIRE in MULTI), single-use refresh-token markers (SET NX EX),
    # the API-key cache with its revocations, and API keys' first-use markers.
    RedisUser("gateway", keys=("dl:rl:*", "dl:refresh-used:*", "dl:apikey:*", "dl:apikey-used:*", "dl:gateway:*"),
              commands=(*_STRINGS, "+incrby")),  # redis-py's INCR is INCRBY
    # The query cache and its per-dataset index; announces deletions.
    RedisUser("data", keys=("dl:q:*", "dl:data:*"), channels=(events.DATASET_DELETED,),
              commands=(*_STRINGS, *_SETS, "+publish")),
    # The chart cache and its per-dataset index; listens for dataset deletions.
    RedisUser("viz", keys=("dl:viz:*",), channels=(events.DATASET_DELETED,),
              commands=(*_STRINGS, *_SETS, *_SUBSCRIBER)),
    # No keys at all: only the model-deletion feed between ai instances.
    RedisUser("ai", channels=(events.MODEL_DELETED,), commands=("+publish", *_SUBSCRIBER)),
    # The compute API: enqueue, fetch, cancel (publishes on the worker's rq:pubsub channel),
    # reap; its own dl:compute:* (job index, quotas, submit lock, training claims).
    RedisUser("compute", keys=("rq:*", "dl:compute:*"), channels=("rq:pubsub:*",), commands=_RQ),
    # RQ workers (and compute-batch allocations); a worker names its connection.
    RedisUser("worker", keys=("rq:*", "dl:compute:*"), channels=("rq:pubsub:*",),
              commands=(*_RQ, "+client|setname")),
    # Operators and the test harness only: no service is ever given this one.
    RedisUser("admin", keys=("*",), channels=("*",), commands=("+@all",)),
)}
SERVICE_USERS = (*SERVICES, "worker")  # what processes connect as: each service, and the RQ workers

# The server side of the memory limit. noeviction: nothing is ever dropped silently — not a
# queued RQ job (no TTL), not a finished job's result, not a refresh-token marker (dropping it
# would re-open refresh replay), not RQ's short-TTL worker/lock keys. When full, writes fail:
# caches skip storing (a miss), rate limits/enqueues answer 503, and TTLs free the space.
MAXMEMORY_POLICY = "noeviction"


def password_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def acl_lines(passwords: dict[str, str]) -> str:
    """`user` directives for redis.conf: `default` off, then one line per user given.
    Passwords appear only as SHA-256 (`#<hex>`), never in plain text."""
    lines = ["user default off nopass resetkeys resetchannels -@all"]
    for name, password in sorted(passwords.items()):
        lines.append(f"user {name} on #{password_hash(password)} {USERS[name].rules()}")
    return "\n".join(lines) + "\n"
