"""Redis ACL users against the platform's real Valkey: each service's credential (the very
file its process reads) does what the service needs and is DENIED everything else — above
all the RQ keyspace, since whoever writes `rq:*` has the worker run a job of their choosing."""

import json

import pytest
import redis
from redis.driver_info import DriverInfo
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from rq import Queue
from rq.serializers import JSONSerializer

from datalab.core import events
from datalab.core.redis_users import SERVICE_USERS
from datalab.devstack.local_stack import redis_secret_name

pytestmark = pytest.mark.integration

# (DEBUG is off server-wide in Valkey: enable-debug-command no.)
DANGEROUS = [("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"), ("CONFIG", "SET", "maxmemory", "0"),
             ("EVAL", "return 1", "0"), ("KEYS", "*"), ("SCAN", "0"),
             ("ACL", "LIST"), ("CLIENT", "LIST"), ("CLIENT", "KILL", "ID", "1"), ("MONITOR",),
             ("REPLICAOF", "NO", "ONE"), ("MODULE", "LIST"), ("SCRIPT", "FLUSH"), ("FUNCTION", "LIST"),
             ("BGSAVE",)]


def as_user(platform, user: str) -> redis.Redis:
    """A client logged in with the credential file the service's own process reads."""
    cred = json.loads((platform.secrets_dir / redis_secret_name(user)).read_text())
    assert cred["username"] == user
    # Marked (CLIENT SETINFO lib-name, which every user may send), so the session's check for
    # unmeant refusals (conftest) leaves this module's deliberate ones out.
    return redis.Redis(port=platform.config.redis_port, username=cred["username"], password=cred["password"],
                       driver_info=DriverInfo(name="acl-test"))


@pytest.fixture(scope="module")
def users(platform):
    clients = {u: as_user(platform, u) for u in SERVICE_USERS}
    yield clients
    for c in clients.values():
        c.close()


def denied(call) -> bool:
    try:
        call()
    except NoPermissionError:
        return True
    return False


def test_the_default_user_is_off(platform):
    with pytest.raises((AuthenticationError, ResponseError)):
        redis.Redis(port=platform.config.redis_port).ping()
    for password in platform.redis.passwords.values():  # no service password opens `default`
        with pytest.raises((AuthenticationError, ResponseError)):
            redis.Redis(port=platform.config.redis_port, password=password).ping()


def test_no_service_user_may_run_dangerous_commands(users):
    for user, client in users.items():
        for command in DANGEROUS:
            assert denied(lambda c=client, cmd=command: c.execute_command(*cmd)), (user, command)


@pytest.mark.parametrize("user", ["gateway", "data", "viz", "ai"])
def test_web_services_cannot_touch_the_queue(users, user):
    """Not enqueue a job, not read one, not list the queues, not talk to a worker."""
    client = users[user]
    queue = Queue("default", connection=client, serializer=JSONSerializer)
    assert denied(lambda: queue.enqueue("datalab.compute.tasks.execute", kwargs={"job_type": "noop", "params": {}}))
    assert denied(lambda: client.rpush("rq:queue:default", "forged-job"))
    assert denied(lambda: client.hset("rq:job:forged", "data", "x"))
    assert denied(lambda: client.get("rq:job:anything"))
    assert denied(lambda: client.smembers("rq:queues"))
    assert denied(lambda: client.zadd("dl:compute:jobs", {"x": 1}))
    assert denied(lambda: client.publish("rq:pubsub:some-worker", "{}"))


def test_each_service_only_its_own_keys(users):
    own = {"gateway": "dl:rl:acl-test", "data": "dl:q:acl-test", "viz": "dl:viz:img:acl-test"}
    for user, key in own.items():
        assert users[user].set(key, "1", ex=30)  # what it needs works
        for other, other_key in own.items():
            if other != user:
                assert denied(lambda c=users[user], k=other_key: c.get(k)), (user, other_key)
                assert denied(lambda c=users[user], k=other_key: c.set(k, "x")), (user, other_key)
    # ai holds no keys at all: not a rate-limit window, not a cache entry.
    for key in (*own.values(), "dl:refresh-used:x", "dl:ai:x"):
        assert denied(lambda k=key: users["ai"].get(k)), key
        assert denied(lambda k=key: users["ai"].set(k, "x")), key
    # The gateway's rate-limit commands work on its keys, INCRBY on another's does not.
    assert users["gateway"].incr("dl:rl:acl-test:n") == 1
    assert denied(lambda: users["compute"].incr("dl:rl:user:someone:0"))


def test_channels_are_per_service(users):
    # data announces deletions, viz hears them; ai has only the model feed.
    assert users["data"].publish(events.DATASET_DELETED, "acl-test") >= 0
    assert denied(lambda: users["data"].publish(events.MODEL_DELETED, "x"))
    assert users["ai"].publish(events.MODEL_DELETED, "acl-test") >= 0
    assert denied(lambda: users["ai"].publish(events.DATASET_DELETED, "x"))
    assert denied(lambda: users["viz"].publish(events.DATASET_DELETED, "x"))  # viz only listens
    assert denied(lambda: users["gateway"].publish(events.DATASET_DELETED, "x"))
    sub = users["ai"].pubsub()
    sub.subscribe(events.DATASET_DELETED)
    assert denied(lambda: sub.get_message(timeout=2))  # the refusal answers the SUBSCRIBE
    sub.close()


def test_compute_and_worker_have_the_queue_but_nothing_else(users):
    for user in ("compute", "worker"):
        client = users[user]
        client.set("rq:acl-test", "1", ex=30)
        assert client.get("rq:acl-test") == b"1"
        for key in ("dl:rl:x", "dl:refresh-used:x", "dl:q:x", "dl:viz:img:x"):
            assert denied(lambda c=client, k=key: c.get(k)), (user, key)
    # Lua as redis-py's Script runs it (RQ's scheduler lock, redis-py's Lock), never EVAL...
    for user in ("compute", "worker"):
        assert denied(lambda u=user: users[u].eval("return 1", 0))
        sha = users[user].script_load("return redis.call('GET', KEYS[1])")
        assert users[user].evalsha(sha, 1, "rq:acl-test") == b"1"
        # ...and a script runs with the caller's rights: no reaching other keys through Lua.
        assert denied(lambda u=user, h=sha: users[u].evalsha(h, 1, "dl:rl:x"))
    for user in ("gateway", "data", "viz", "ai"):
        assert denied(lambda u=user: users[u].script_load("return 1"))


def test_credentials_are_0600_and_the_server_config_holds_hashes_only(platform):
    for user in (*SERVICE_USERS, "admin"):
        path = platform.secrets_dir / redis_secret_name(user)
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert not (platform.secrets_dir / "redis_password").exists()  # the old shared one
    conf = platform.redis.conf
    assert conf.stat().st_mode & 0o777 == 0o600
    text = conf.read_text()
    assert "requirepass" not in text and "user default off" in text
    for password in platform.redis.passwords.values():
        assert password not in text
