"""The `datalab` command where the operations code or the dev harness is not installed (the
service image): its help still works, and such a command says why it cannot run."""

import sys

import pytest

from datalab import cli

ABSENT = ["datalab.ops.deploy", "datalab.ops.vault_bootstrap", "datalab.ops.cluster_checks",
          "datalab.devstack.local_stack"]


@pytest.fixture
def image_like(monkeypatch):
    for name in ABSENT:  # None in sys.modules: importing it raises ModuleNotFoundError
        monkeypatch.setitem(sys.modules, name, None)


def test_help_lists_every_command_without_ops_or_devstack(image_like, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("up", "serve", "worker", "deploy", "status", "vault", "cluster-test"):
        assert command in out


@pytest.mark.parametrize(("argv", "module"), [
    (["deploy", "jobs/data.nomad.hcl", "--var-file", "x.hcl"], "datalab.ops.deploy"),
    (["status"], "datalab.ops.deploy"),
    (["vault", "bootstrap", "--pg-admin-url", "postgresql://x"], "datalab.ops.vault_bootstrap"),
    (["cluster-test"], "datalab.ops.cluster_checks"),
    (["up"], "datalab.devstack"),
])
def test_a_command_whose_module_is_absent_says_so(image_like, capsys, argv, module):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"datalab {argv[0]}: {module} is not installed here" in err and "Traceback" not in err


def test_serve_choices_are_the_services():
    from datalab.core.services import SERVICE_PORTS

    assert tuple(SERVICE_PORTS) == cli.SERVICES and "gateway" in cli.SERVICES
