"""`datalab deploy` and `datalab status` (python-nomad).

deploy: for each job file, Nomad parses it (its own HCL2 parser, with the var-files),
plans it (the diff is shown), registers it and follows the deployment until it is healthy
or failed; canaries are promoted with --promote. A batch or system job has no deployment:
its allocations are followed instead. Exit status is non-zero with the reason on failure.

Both take Nomad's and Consul's settings from the environment their CLIs read
(core/nomad_api.py, ops/hashicorp_env.py). A call that cannot be made (agent unreachable,
TLS failed, token refused) ends the command with one line on stderr naming the address and
what to set, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nomad

from datalab.core.hashicorp_http import ClusterAccessError
from datalab.core.nomad_api import NomadEnv, access_error
from datalab.core.nomad_api import nomad_client as client  # noqa: F401  # deploy.client: e2e, cluster_checks

from .hashicorp_env import ConsulEnv


def parse_job(api: nomad.Nomad, path: Path, var_files: list[Path], variables: list[str]) -> dict:
    """Nomad's own parser (POST /v1/jobs/parse) with HCL2 variables, as `nomad job run` does."""
    var_text = "\n".join(f.read_text() for f in var_files)
    for item in variables:
        key, _, value = item.partition("=")
        raw = value.strip().startswith(("{", "[")) or value.lstrip("-").replace(".", "").isdigit()
        var_text += f"\n{key} = {value}" if raw else f"\n{key} = {json.dumps(value)}"
    return api.jobs.request(
        "parse",
        json={"JobHCL": path.read_text(), "Variables": var_text, "Canonicalize": True},
        method="post",
    ).json()


@dataclass
class Outcome:
    job: str
    ok: bool
    reason: str = ""


def _say(msg: str) -> None:
    print(msg, flush=True)


def plan_summary(plan: dict) -> str:
    parts = []
    for group, update in (plan.get("Annotations") or {}).get("DesiredTGUpdates", {}).items():
        changes = {k: v for k, v in update.items() if v and k != "Ignore"}
        if changes:
            parts.append(f"{group}: " + ", ".join(f"{k.lower()} {v}" for k, v in sorted(changes.items())))
    failed = plan.get("FailedTGAllocs") or {}
    for group, metric in failed.items():
        parts.append(f"{group}: CANNOT PLACE ({_placement_reason(metric)})")
    return "; ".join(parts) or "no changes"


def _placement_reason(metric: dict) -> str:
    reasons = []
    for key in ("ConstraintFiltered", "DimensionExhausted", "ClassFiltered"):
        for what, count in (metric.get(key) or {}).items():
            reasons.append(f"{what} ({count})")
    return ", ".join(reasons) or f"{metric.get('NodesEvaluated', 0)} nodes evaluated, none fit"


def deploy_one(api: nomad.Nomad, path: Path, var_files: list[Path], variables: list[str],
               promote: bool, timeout: float) -> Outcome:
    try:
        job = parse_job(api, path, var_files, variables)
    except nomad.api.exceptions.BaseNomadException as exc:
        # Unreachable, TLS or ACL: no job can be deployed; the caller says so once.
        if (denied := access_error(exc, api)) is not None:
            raise denied from None
        return Outcome(path.name, False, f"Nomad refused to parse {path}: {_error_text(exc)}")
    job_id = job["ID"]
    plan = api.job.plan_job(job_id, {"Job": job}, diff=True)
    _say(f"[{job_id}] plan: {plan_summary(plan)}")
    if plan.get("FailedTGAllocs"):
        return Outcome(job_id, False, f"cannot be placed: {plan_summary(plan)}")
    result = api.job.register_job(job_id, {"Job": job})
    _say(f"[{job_id}] registered (evaluation {result.get('EvalID', '')[:8]})")
    if job.get("ParameterizedJob") or job.get("Periodic"):
        return Outcome(job_id, True, "registered (dispatched or periodic: nothing runs yet)")
    if job.get("Type") in ("batch", "system", "sysbatch"):
        return _follow_allocations(api, job_id, job["Type"], timeout, int(result.get("JobModifyIndex", 0)))
    return _follow_deployment(api, job_id, promote, timeout, int(result.get("JobModifyIndex", 0)))


def _follow_deployment(api, job_id: str, promote: bool, timeout: float, modify_index: int) -> Outcome:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        dep = api.job.get_deployment(job_id)
        if not dep or dep.get("JobModifyIndex", 0) < modify_index:
            # No deployment for this version (no change, or still being created).
            summary = api.job.get_summary(job_id)
            if _all_running(summary) and time.monotonic() > deadline - timeout + 5:
                return Outcome(job_id, True, "unchanged and running")
            time.sleep(1)
            continue
        status = dep["Status"]
        groups = dep.get("TaskGroups") or {}
        line = ", ".join(
            f"{g}: {s.get('HealthyAllocs', 0)}/{s.get('DesiredTotal', 0)} healthy"
            + (f", canaries {(s.get('PlacedCanaries') and len(s['PlacedCanaries'])) or 0}/{s['DesiredCanaries']}"
               if s.get("DesiredCanaries") else "")
            + (f", {s['UnhealthyAllocs']} unhealthy" if s.get("UnhealthyAllocs") else "")
            for g, s in sorted(groups.items())
        )
        if line != last:
            _say(f"[{job_id}] deployment {dep['ID'][:8]} {status}: {line}")
            last = line
        if status == "successful":
            return Outcome(job_id, True, "healthy")
        if status in ("failed", "cancelled"):
            return Outcome(job_id, False, f"deployment {status}: {dep.get('StatusDescription', '')}"
                           + _failing_allocs(api, job_id))
        if promote and _canaries_healthy(groups):
            api.deployment.promote_deployment_all(dep["ID"])
            _say(f"[{job_id}] canaries healthy: promoted")
            promote = False
        time.sleep(1)
    return Outcome(job_id, False, f"not healthy after {timeout:.0f}s" + _failing_allocs(api, job_id))


def _canaries_healthy(groups: dict) -> bool:
    waiting = [s for s in groups.values() if s.get("DesiredCanaries") and not s.get("Promoted")]
    return bool(waiting) and all(
        len(s.get("PlacedCanaries") or []) >= s["DesiredCanaries"] and s.get("HealthyAllocs", 0) >= s["DesiredCanaries"]
        for s in waiting
    )


def _all_running(summary: dict) -> bool:
    groups = (summary or {}).get("Summary") or {}
    return bool(groups) and all(g.get("Running", 0) > 0 and not g.get("Starting") for g in groups.values())


def _follow_allocations(api, job_id: str, job_type: str, timeout: float, modify_index: int) -> Outcome:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        allocs = [a for a in api.job.get_allocations(job_id) if a.get("JobVersion") is not None]
        latest = [a for a in allocs if a.get("ModifyIndex", 0) >= modify_index] or allocs
        states = {a["ClientStatus"] for a in latest}
        if (latest and states <= {"running", "complete"} and job_type != "batch") or states == {"complete"}:
            return Outcome(job_id, True, f"{len(latest)} allocation(s) {'/'.join(sorted(states))}")
        if "failed" in states:
            return Outcome(job_id, False, "an allocation failed" + _failing_allocs(api, job_id))
        time.sleep(1)
    return Outcome(job_id, False, f"allocations not running after {timeout:.0f}s" + _failing_allocs(api, job_id))


def _failing_allocs(api, job_id: str) -> str:
    """The last task events of the job's unhealthy allocations: the reason a user needs."""
    lines = []
    for alloc in api.job.get_allocations(job_id)[:10]:
        healthy = (alloc.get("DeploymentStatus") or {}).get("Healthy")
        if alloc["ClientStatus"] in ("running", "complete") and healthy is not False:
            continue
        for task, state in (alloc.get("TaskStates") or {}).items():
            events = state.get("Events") or []
            for e in events[-3:]:  # the cause is often just before "Not Restarting"
                lines.append(f"  alloc {alloc['ID'][:8]} task {task}: {e.get('Type')}: {e.get('DisplayMessage', '')}")
            lines += [f"    {line}" for line in _log_tail(api, alloc["ID"], task)]
        if lines:
            break  # one failing allocation's story is enough
    return ("\n" + "\n".join(lines[:40])) if lines else ""


def task_log(api, alloc_id: str, task: str, stream: str, tail_bytes: int) -> str:
    """The last `tail_bytes` of a task's stdout or stderr (needs the read-logs capability)."""
    return str(api.client.stream_logs.stream(alloc_id, task, stream, origin="end", offset=tail_bytes, plain=True))


def _log_tail(api, alloc_id: str, task: str, lines: int = 8) -> list[str]:
    """The end of a task's stderr and stdout (JSON logs go to stdout; tracebacks to either)."""
    out = []
    for stream in ("stderr", "stdout"):
        try:
            text = task_log(api, alloc_id, task, stream, 3000)
        except Exception:  # logs are a courtesy; the events above still say what happened
            continue
        out += [f"{stream}: {line[-400:]}" for line in text.strip().splitlines()[-lines:]]
    return out


def _error_text(exc: Exception) -> str:
    resp = getattr(exc, "nomad_resp", None)
    text = getattr(resp, "text", None) or str(exc)
    return text.strip()[:500]


def deploy_many(make_client: Callable[[], nomad.Nomad], paths: list[Path], var_files: list[Path],
                variables: list[str], promote: bool, timeout: float, parallel: int = 1,
                keep_going: bool = False) -> list[Outcome]:
    """deploy_one for each job; `parallel` > 1 follows that many deployments at once (each
    with its own client), which the jobs allow: none waits on another to start."""
    def one(path: Path) -> Outcome:
        outcome = deploy_one(make_client(), path, var_files, variables, promote, timeout)
        _say(f"[{outcome.job}] {'OK' if outcome.ok else 'FAILED'}: {outcome.reason}")
        return outcome

    if parallel <= 1:
        outcomes = []
        for path in paths:
            outcomes.append(one(path))
            if not outcomes[-1].ok and not keep_going:
                break
        return outcomes
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(one, paths))


def _fail(command: str, error: ClusterAccessError) -> int:
    print(f"datalab {command}: {error}", file=sys.stderr, flush=True)
    return 1


def run_deploy(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.jobs] or sorted(Path("jobs").glob("*.nomad.hcl"))
    env = NomadEnv.from_env(args.nomad_addr)
    try:
        outcomes = deploy_many(env.client, paths, [Path(f) for f in args.var_file], args.var,
                               args.promote, args.timeout, args.parallel, args.keep_going)
    except ClusterAccessError as exc:
        return _fail("deploy", exc)
    except nomad.api.exceptions.BaseNomadException as exc:  # a later call (plan, register, follow)
        if (denied := env.access_error(exc)) is None:
            raise
        return _fail("deploy", denied)
    return 0 if all(o.ok for o in outcomes) else 1


def run_status(args: argparse.Namespace) -> int:
    """Nomad's jobs and allocations with Consul's health beside them. Nomad unusable: one
    line, exit 1. Consul unusable: Nomad's view is still listed, then one line, exit 1."""
    env = NomadEnv.from_env(args.nomad_addr)
    api = env.client()
    try:
        rows = []
        for job in sorted(api.jobs.get_jobs(), key=lambda j: j["ID"]):
            if job.get("ParentID"):
                continue  # a dispatched child; its parent is listed
            counts: dict[str, int] = {}
            for alloc in api.job.get_allocations(job["ID"]):
                counts[alloc["ClientStatus"]] = counts.get(alloc["ClientStatus"], 0) + 1
            rows.append((job, ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no allocations"))
    except nomad.api.exceptions.BaseNomadException as exc:
        if (denied := env.access_error(exc)) is None:
            raise
        return _fail("status", denied)
    try:
        consul_health, consul_error = _consul_health(ConsulEnv.from_env(args.consul_addr)), None
    except ClusterAccessError as exc:
        consul_health, consul_error = {}, exc
    for job, allocs in rows:
        health = consul_health.get(job["ID"], "")
        print(f"{job['ID']:<16} {job['Type']:<8} {job['Status']:<8} {allocs:<28} {health}")
    return 0 if consul_error is None else _fail("status", consul_error)


def _consul_health(env: ConsulEnv) -> dict[str, str]:
    """Each service's passing count; ClusterAccessError when Consul cannot be asked."""
    import consul

    c = env.client()
    try:
        # The raw answer first: with default-deny ACLs an empty list may mean "not allowed".
        listing = c.http.get(lambda response: response, "/v1/catalog/services", headers=c.prepare_headers())
        if listing.code in (401, 403):
            raise consul.ACLPermissionDenied(listing.body)
        if (hidden := env.filtered_error(listing.headers, listing.body.strip() in ("", "{}"))) is not None:
            raise hidden
        out = {}
        for name in c.catalog.services()[1]:
            entries = c.health.service(name)[1]
            checks = [ch["Status"] for e in entries for ch in e["Checks"] if ch.get("ServiceName") == name]
            passing = sum(1 for e in entries if all(ch["Status"] == "passing" for ch in e["Checks"]))
            failing = f" ({','.join(sorted(set(checks)))})" if checks else ""
            out[name] = f"consul: {passing}/{len(entries)} passing{failing}"
        return out
    except (consul.ConsulException, OSError) as exc:
        # requests' errors are OSErrors; anything else here is a bug to see whole
        raise env.access_error(exc) or ClusterAccessError(f"consul: {env.url}: {exc}") from None


def add_deploy_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("jobs", nargs="*", help="job files (default: jobs/*.nomad.hcl)")
    p.add_argument("--var-file", action="append", default=[], help="HCL2 variable file (repeatable)")
    p.add_argument("--var", action="append", default=[], help="key=value variable (repeatable)")
    p.add_argument("--promote", action="store_true", help="promote canaries once they are healthy")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait per job")
    p.add_argument("--keep-going", action="store_true", help="deploy the remaining jobs after a failure")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="follow N deployments at once (default 1: one job after another)")
    p.add_argument("--nomad-addr", default=None, help="default: NOMAD_ADDR or http://127.0.0.1:4646")


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nomad-addr", default=None, help="default: NOMAD_ADDR or http://127.0.0.1:4646")
    p.add_argument("--consul-addr", default=None, help="default: CONSUL_HTTP_ADDR or http://127.0.0.1:8500")
