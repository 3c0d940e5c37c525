import logging

import pytest

from datalab.core.audit import audit


def test_audit_line_has_the_fields(caplog):
    with caplog.at_level(logging.INFO, logger="datalab.audit"):
        audit("login", "failure", actor="alice", object="user:alice", ip="10.1.2.3")
    (rec,) = [r for r in caplog.records if r.name == "datalab.audit"]
    assert (rec.audit, rec.action, rec.outcome, rec.actor, rec.object, rec.client_ip) == (
        True, "login", "failure", "alice", "user:alice", "10.1.2.3",
    )


@pytest.mark.parametrize("field", ["password", "token", "API_KEY".lower(), "secret"])
def test_audit_refuses_secret_fields(field):
    with pytest.raises(ValueError):
        audit("login", "success", actor="alice", **{field: "x"})
