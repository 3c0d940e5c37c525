"""The fuzz tier: schemathesis against every service's OpenAPI, through Traefik, with a
real token: every phase (examples, coverage, fuzzing, stateful) and every check (`--checks
all`): no 5xx, and every answer as the schema documents it (status, content type, body).

Bounded and reproducible: at most DATALAB_FUZZ_EXAMPLES cases per operation, a time budget
of DATALAB_FUZZ_SECONDS per service, deterministic generation (the same cases each run),
and a request rate under the gateway's per-user limit (a 429 would test nothing). Each
service's figures (requests, 5xx, check failures) are printed and kept, with the HAR of
every request and schemathesis' JSON report, under pytest's basetemp in fuzz/<service>/.

The caller is a fresh non-admin user: what it creates is its own, it cannot touch the other
tests' data, and admin-only operations are exercised as refusals (403).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]

SERVICES = ["gateway", "data", "ai", "compute", "viz"]
EXAMPLES = int(os.environ.get("DATALAB_FUZZ_EXAMPLES", "25"))
SECONDS = int(os.environ.get("DATALAB_FUZZ_SECONDS", "60"))
RATE = "500/m"  # the gateway allows 600 requests a minute per user (rate_limit_user_per_minute)

# Operations whose bodies follow rules JSON Schema does not state (a chart kind's fields,
# columns that must exist in the dataset, a model kind's params, a job type's params and a
# user's quotas, an upload that must parse as CSV or Parquet): a schema-valid body can still
# be refused with a 422 problem naming the rule, which positive_data_acceptance (ST202)
# would count as a failure. Every other check still applies to them.
SEMANTIC_422 = [
    "POST /api/v1/viz/charts",
    "POST /api/v1/ai/models",
    "POST /api/v1/ai/models/{model_id}/predict",
    "POST /api/v1/compute/jobs",
    "POST /api/v1/data/datasets",
    "POST /api/v1/data/datasets/{dataset_id}/query",
]


# Columns of the seed dataset: fuzzed column names and ids come from these often enough that
# the cases reach past "no such dataset / column" into queries, renders and fits. The float
# column holds NaN and ±inf.
SEED_CSV = "x,y,v,city,day\n" + "".join(
    f"{i},{(i * 37) % 11 / 3:.3f},{['1.5', 'inf', 'NaN', '-inf'][i % 4] if i % 5 == 0 else i / 7:},"
    f"{'ABC'[i % 3]},2024-01-{i % 28 + 1:02d}\n" for i in range(60))
COLUMNS = ["x", "y", "v", "city", "day"]
BOUND = {  # binding key -> dictionary (schemathesis' `parameters` with `dictionaries`)
    "dataset_id": "datasets", "body.dataset_id": "datasets", "model_id": "models",
    "body.x": "columns", "body.y": "columns", "body.value": "columns", "body.group_by": "columns",
    "body.target": "columns", "body.features[*]": "columns",
}


def seed(base_url: str, headers: dict) -> dict[str, list[str]]:
    """A dataset and a model of the fuzzing user, for the dictionaries."""
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as http:
        resp = http.post("/api/v1/data/datasets", files={"file": ("seed.csv", SEED_CSV, "text/csv")})
        assert resp.status_code == 201, resp.text
        dataset = resp.json()["id"]
        models = []
        resp = http.post("/api/v1/ai/models", json={"dataset_id": dataset, "target": "y", "features": ["x"],
                                                    "kind": "linear"})
        if resp.status_code == 201:  # ai may not be running
            models.append(resp.json()["id"])
    return {"datasets": [dataset], "models": models or [dataset], "columns": COLUMNS}


def _config(path: Path, dictionaries: dict[str, list[str]], operations: set[str]) -> Path:
    lines = []
    for name, values in dictionaries.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    lines.append("[parameters]")
    for key, name in BOUND.items():
        lines.append(f'"{key}" = {{ dictionary = "{name}", probability = 0.7 }}')
    lines.append("")
    for name in sorted(operations.intersection(SEMANTIC_422)):  # this schema's: no "unmatched filters" warnings
        lines += ["[[operations]]", f'include-name = "{name}"',
                  "[operations.checks.positive_data_acceptance]",
                  'expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]', ""]
    path.write_text("\n".join(lines))
    return path


def run_schemathesis(schema: Path, base_url: str, token: str, out: Path, dictionaries: dict[str, list[str]],
                     examples: int = EXAMPLES, seconds: int = SECONDS) -> dict:
    """Run `st run` on `schema` against `base_url`; return the figures of the run."""
    out.mkdir(parents=True, exist_ok=True)
    paths = json.loads(schema.read_text())["paths"]
    operations = {f"{method.upper()} {path}" for path, item in paths.items() for method in item}
    config = _config(out / "schemathesis.toml", dictionaries, operations)
    argv = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
        "run", str(schema),
        "--url", base_url,
        "--header", f"Authorization: Bearer {token}",
        "--checks", "all",
        "--max-examples", str(examples),
        "--max-time", str(seconds),
        "--generation-deterministic",
        "--rate-limit", RATE,
        "--workers", "1",
        "--request-timeout", "30",
        "--report", "json,har",
        "--report-json-path", str(out / "report.json"),
        "--report-har-path", str(out / "requests.har"),
        "--no-color",
    ]
    for stale in ("report.json", "requests.har"):
        (out / stale).unlink(missing_ok=True)
    # The CLI's own deadline is --max-time; this one only stops a hung run.
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds * 3 + 300, cwd=out)
    (out / "output.txt").write_text(proc.stdout + proc.stderr)
    assert (out / "report.json").exists(), f"schemathesis did not run:\n{proc.stdout[-5000:]}{proc.stderr[-5000:]}"
    report = json.loads((out / "report.json").read_text())
    entries = json.loads((out / "requests.har").read_text())["log"]["entries"]
    statuses = Counter(e["response"]["status"] for e in entries)
    return {
        "requests": len(entries),
        "5xx": sum(n for status, n in statuses.items() if status >= 500),
        "statuses": dict(sorted(statuses.items())),
        "failures": [
            {"code": f["code"], "title": f["title"], "count": f["count"], "operations": f["operations"]}
            for f in report["failures"]
        ],
        "errors": report["errors"],
        "test_cases": report["test_cases"],
        "stop_reason": report["stop_reason"],
        "exit_code": proc.returncode,
    }


def _schema(base_url: str, service: str, headers: dict, path: Path) -> Path:
    prefix = "auth" if service == "gateway" else service  # the prefix Traefik routes to it
    url = f"{base_url}/api/v1/{prefix}/openapi.json"
    resp = httpx.get(url, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    path.write_text(resp.text)
    return path


@pytest.mark.parametrize("service", SERVICES)
def test_service_conforms_to_its_openapi(platform, base_url, user_factory, tmp_path_factory, capsys,
                                         record_property, service):
    if service not in platform.config.services:
        pytest.skip(f"{service} is not running (DATALAB_TEST_SERVICES)")
    _, _, headers = user_factory(f"fuzz-{service}-")
    token = headers["Authorization"].removeprefix("Bearer ")
    out = tmp_path_factory.getbasetemp() / "fuzz" / service  # kept after the run (pytest's basetemp)
    out.mkdir(parents=True, exist_ok=True)
    schema = _schema(base_url, service, headers, out / "openapi.json")
    figures = run_schemathesis(schema, base_url, token, out, seed(base_url, headers))
    (out / "figures.json").write_text(json.dumps(figures, indent=2))
    summary = (f"fuzz {service}: {figures['requests']} requests, {figures['5xx']} 5xx, "
               f"{sum(f['count'] for f in figures['failures'])} check failures "
               f"({', '.join(f['code'] + ' ' + f['title'] for f in figures['failures']) or 'none'}); "
               f"statuses {figures['statuses']}; stopped: {figures['stop_reason']}")
    record_property("fuzz", figures)
    with capsys.disabled():  # on the terminal whatever the capture mode
        print(f"\n{summary}; files: {out}")
    assert figures["requests"] > 0 and not figures["errors"], figures
    assert figures["5xx"] == 0, f"{summary}\n{(out / 'output.txt').read_text()[-20000:]}"
    assert not figures["failures"], f"{summary}\n{(out / 'output.txt').read_text()[-20000:]}"
