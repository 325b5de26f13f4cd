"""The image, without a container engine: deploy/Dockerfile parsed, and its build steps dry-run in a clean venv:
the COPY steps copy from the repository into a scratch directory, the RUN steps that install run there with the
venv's pip, then the installed `ricardo` answers --help and finds its embedded default config."""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
OFFLINE_SIGNS = ("Temporary failure in name resolution", "NewConnectionError", "Network is unreachable")


def instructions() -> list[tuple[str, str]]:
    parser = DockerfileParser(path=str(DOCKERFILE))
    return [(step["instruction"], step["value"]) for step in parser.structure]


def values(kind: str) -> list[str]:
    return [value for instruction, value in instructions() if instruction == kind]


def test_slim_base_non_root_user_healthcheck_and_serve_on_the_embedded_config():
    [base] = values("FROM")
    assert base.split(":")[1].endswith("-slim"), base
    [user] = values("USER")
    assert user not in ("root", "0")
    [useradd] = [v for v in values("RUN") if v.startswith("useradd")]
    assert f"--uid {user}" in useradd
    [health] = values("HEALTHCHECK")
    assert "/healthz" in health and "--interval" in health
    command = json.loads(values("ENTRYPOINT")[0]) + json.loads(values("CMD")[0])
    assert command[:2] == ["ricardo", "serve"]
    assert "--config" not in command  # the embedded default
    assert "0.0.0.0" in command  # reachable from outside the container


def test_the_build_context_keeps_what_the_copy_steps_need():
    """deploy/Dockerfile.dockerignore (BuildKit reads it beside the Dockerfile): the last matching rule wins."""
    rules = [line for line in DOCKERFILE.with_name("Dockerfile.dockerignore").read_text().splitlines() if line.strip()]
    rules = [line for line in rules if not line.startswith("#")]

    def kept(path: str) -> bool:
        verdict = True
        for rule in rules:
            negated, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*"):
                verdict = negated
        return verdict

    sources = [src for value in values("COPY") for src in shlex.split(value)[:-1]]
    assert sources and all(kept(src) for src in sources), sources
    assert not kept(".venv") and not kept(".git")


@pytest.mark.timeout(600)  # a fresh install of the dependencies: about 2 minutes here, mostly downloads
def test_build_steps_install_the_package_in_a_clean_venv(tmp_path):
    venv, workdir, home = tmp_path / "venv", tmp_path / "build", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env |= DockerfileParser(path=str(DOCKERFILE)).envs
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    ran = []
    for instruction, value in instructions():
        if instruction == "COPY":
            *sources, destination = shlex.split(value)
            for source in sources:
                target = workdir / destination / (Path(source).name if destination.endswith("/") else "")
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, workdir / destination, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(REPO / source, target)
        elif instruction == "RUN" and not value.startswith("useradd"):  # a system user: checked above
            result = subprocess.run(
                ["bash", "-c", value], cwd=workdir, env=env, capture_output=True, text=True, timeout=480
            )
            output = result.stdout + result.stderr
            if result.returncode != 0 and any(sign in output for sign in OFFLINE_SIGNS):
                pytest.skip(f"offline: the package registry cannot be reached ({value})")
            assert result.returncode == 0, f"RUN {value}:\n{output[-3000:]}"
            ran.append(value)
    assert any(step.startswith("pip install") for step in ran)
    python = str(venv / "bin" / "python")
    where = subprocess.run(
        [python, "-c", "import ricardo; print(ricardo.__file__)"], cwd=home, env=env, capture_output=True, text=True
    )
    assert where.stdout.startswith(str(venv)), where  # installed, not read from the repository
    helped = subprocess.run(
        [str(venv / "bin" / "ricardo"), "--help"], cwd=home, env=env, capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0 and "serve" in helped.stdout, helped.stderr
    embedded = "from ricardo.gateway.config import load_config; print(len(load_config(None).pools))"
    pools = subprocess.run([python, "-c", embedded], cwd=home, env=env, capture_output=True, text=True, timeout=60)
    assert pools.returncode == 0 and int(pools.stdout) > 0, pools.stderr
