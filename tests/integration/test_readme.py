"""The README's curl walkthrough, run as written against the test platform."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"


def curl_block() -> str:
    text = README.read_text()
    section = text.split("## Try it with curl", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_readme_curl_walkthrough(platform):
    if shutil.which("curl") is None:  # a fresh machine (make cleanroom) may have none
        pytest.skip("NO CURL on this machine: the README's curl walkthrough was NOT run")
    script = curl_block()
    assert "B=http://127.0.0.1:8080" in script and "$(cat .datalab/admin-password)" in script
    script = script.replace("B=http://127.0.0.1:8080", f"B={platform.base_url}")
    script = script.replace("$(cat .datalab/admin-password)", f"$(cat {platform.secrets_dir / 'admin_password'})")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "HTTP/1.1 200" in out and '"region":"north","units_sum":8' in out  # the query
    assert "204" in out  # the delete
    assert '"status":401' in out  # no token
    assert '"items":' in out  # the API-key call listed datasets
    assert '"predictions":' in out
    assert '"type":"correlation"' in out and '"status":"finished"' in out
    assert "chart again: 304" in out
