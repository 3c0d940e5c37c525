"""Nomad itself validates every job with every var-file (`nomad job validate` against a real
dev agent, built from Go modules), Docker-driver jobs included: validation needs no engine."""

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from datalab.devstack.hashistack import NomadDev, OpenBaoDev, find_binary

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((ROOT / "jobs").glob("*.nomad.hcl"))
VAR_FILES = sorted((ROOT / "jobs" / "vars").glob("*.hcl"))

pytestmark = pytest.mark.skipif(
    find_binary("nomad") is None,
    reason="NO NOMAD BINARY: run tools/hashistack/build.sh nomad; jobs NOT validated by Nomad",
)


@pytest.fixture(scope="module")
def agent():
    root = Path(tempfile.mkdtemp(prefix="datalab-validate-"))
    bao = OpenBaoDev(root / "bao")
    bao.start()
    nomad = NomadDev(root / "nomad", consul=None, vault=bao)
    nomad.start()
    try:
        yield nomad
    finally:
        nomad.stop()
        bao.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("var_file", VAR_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_nomad_validates(agent, job, var_file):
    out = subprocess.run(
        [agent.binary, "job", "validate", f"-address={agent.address}", "-var-file", str(var_file), str(job)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Job validation successful" in out.stdout
