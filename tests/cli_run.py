"""Running `datalab` as an operator does, for the CLI error tests (unit and integration):
only the HashiCorp variables a test gives, and the one stderr line a failure must be."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HASHICORP_VARS = [name for name in os.environ if name.startswith(("NOMAD_", "CONSUL_", "VAULT_"))]


def run_cli(*argv: str, **env: str) -> subprocess.CompletedProcess:
    """`datalab ...` as an operator runs it, with only the HashiCorp variables given."""
    clean = {k: v for k, v in os.environ.items() if k not in HASHICORP_VARS}
    return subprocess.run([sys.executable, "-m", "datalab.cli", *argv], env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def one_line(result: subprocess.CompletedProcess, *wanted: str) -> str:
    """The single stderr line of a failed command, holding every `wanted` text."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for text in wanted:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def probe_job(directory: Path) -> Path:
    """A small job file: what deploy sends first (Nomad's parser) is what fails."""
    path = directory / "probe.nomad.hcl"
    path.write_text('job "probe" {\n  group "g" {\n    task "t" {\n      driver = "raw_exec"\n'
                    '      config {\n        command = "/bin/true"\n      }\n    }\n  }\n}\n')
    return path
