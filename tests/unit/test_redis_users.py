"""The Redis ACL table: the queue belongs to compute and the workers alone, no service user
gets every key or command, and the rendered lines carry hashes, never a password."""

from datalab.core import events
from datalab.core.redis_users import SERVICE_USERS, USERS, acl_lines, password_hash


def test_only_compute_and_workers_hold_the_queue():
    for name in SERVICE_USERS:
        user = USERS[name]
        assert "*" not in user.keys and "*" not in user.channels, name
        assert "+@all" not in user.commands, name
        assert any(k.startswith("rq:") for k in user.keys) == (name in ("compute", "worker")), name


def test_lua_only_for_compute_and_workers_and_never_eval():
    for name in SERVICE_USERS:
        rules = USERS[name].rules()
        assert ("+evalsha" in rules) == (name in ("compute", "worker")), name
        assert "+eval " not in rules + " " and "+@scripting" not in rules, name


def test_channels():
    assert USERS["ai"].channels == (events.MODEL_DELETED,) and USERS["ai"].keys == ()
    assert USERS["data"].channels == USERS["viz"].channels == (events.DATASET_DELETED,)
    assert USERS["gateway"].channels == ()


def test_acl_lines_default_off_and_hashes_only():
    passwords = {name: f"{name}-secret-password" for name in (*SERVICE_USERS, "admin")}
    text = acl_lines(passwords)
    lines = text.splitlines()
    assert lines[0] == "user default off nopass resetkeys resetchannels -@all"
    for name, password in passwords.items():
        assert password not in text
        (line,) = [entry for entry in lines if entry.startswith(f"user {name} ")]
        assert line.startswith(f"user {name} on #{password_hash(password)} resetkeys ")
        assert " -@all " in line  # nothing inherited: rules start from no rights
