"""The Dockerfile (which cannot be built here) is checked by reading it: base image and Ray
version pins agree with pyproject.toml and the Kubernetes objects, it runs as a non-root
user, installs raysys, bakes no secrets in, and .dockerignore keeps the context small."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def _arg_defaults(pairs: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for keyword, rest in pairs:
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name] = shlex.split(value)[0] if value else ""
    return defaults


def _substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m.group(1) or m.group(2)], text)


def _pyproject_ray_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'"ray(?:\[[^\]]*\])?==([0-9][^"]*)"', text)
    assert match, "pyproject.toml must pin ray with == (the image's Ray version)"
    return match.group(1)


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text(encoding="utf-8"))


def test_base_image_is_the_official_ray_image_pinned_to_pyprojects_ray(dockerfile):
    froms = [rest for keyword, rest in dockerfile if keyword == "FROM"]
    assert len(froms) == 1, "one stage: the Ray image plus raysys"
    image = _substitute(froms[0].split()[0], _arg_defaults(dockerfile))
    repository, _, tag = image.partition(":")
    assert repository == "rayproject/ray"
    ray_version, python_tag, variant = tag.split("-")
    assert ray_version == _pyproject_ray_version()
    assert python_tag == "py311"
    assert variant == "cpu", "the default build is the CPU image"


def test_gpu_variant_is_a_build_arg(dockerfile):
    defaults = _arg_defaults(dockerfile)
    assert "VARIANT" in defaults and "${VARIANT}" in next(r for k, r in dockerfile if k == "FROM")
    assert defaults["TORCH_INDEX"] == "cpu"
    runs = " ".join(rest for keyword, rest in dockerfile if keyword == "RUN")
    assert "download.pytorch.org/whl/${TORCH_INDEX}" in runs


def test_torch_pin_matches_pyproject(dockerfile):
    torch_version = _arg_defaults(dockerfile)["TORCH_VERSION"]
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'"torch([^"]*)"', text)
    assert match, "pyproject.toml must list torch"
    from packaging.specifiers import SpecifierSet

    assert torch_version in SpecifierSet(match.group(1).split(";")[0].strip())


def test_runs_as_non_root_user(dockerfile):
    users = [rest for keyword, rest in dockerfile if keyword == "USER"]
    assert users, "the image must set USER"
    assert users[-1] not in {"root", "0", "0:0"}
    # The pod securityContext in the chart assumes the Ray image's user: uid 1000.
    assert users[-1] == "ray"


def test_installs_raysys_and_copies_jobs_where_the_rayjobs_expect_them(dockerfile):
    runs = " ".join(rest for keyword, rest in dockerfile if keyword == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs), "raysys itself must be pip-installed"
    env = " ".join(rest for keyword, rest in dockerfile if keyword == "ENV")
    assert "APP_DIR=/home/ray/raysys" in env
    workdirs = [rest for keyword, rest in dockerfile if keyword == "WORKDIR"]
    assert workdirs[-1] in {"${APP_DIR}", "/home/ray/raysys"}
    copies = [rest.split() for keyword, rest in dockerfile if keyword == "COPY"]
    sources = {word for words in copies for word in words[:-1] if not word.startswith("--")}
    assert {"pyproject.toml", "README.md", "raysys", "jobs"} <= sources
    # Every RayJob entrypoint runs /home/ray/raysys/jobs/<script>.py.
    helpers = (ROOT / "helm" / "raysys" / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    assert "/home/ray/raysys/jobs" in helpers


def test_no_secrets_baked_in(dockerfile):
    suspicious = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEY|CREDENTIAL)", re.I)
    for keyword, rest in dockerfile:
        if keyword in {"ENV", "ARG", "LABEL"}:
            assert not suspicious.search(rest), f"{keyword} {rest} looks like a secret"
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for pattern in (".env", ".git", ".venv", "**/*.pem", ".kube", ".aws"):
        assert pattern in ignored


def test_dockerignore_keeps_the_copied_sources(dockerfile):
    ignored = [
        line.strip().lstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("pyproject.toml", "README.md", "raysys", "jobs"):
        assert needed not in ignored


def test_every_ray_image_tag_carries_the_same_ray_version():
    """rayVersion in the chart == the Ray version in both image tags == pyproject's pin."""
    values = yaml.safe_load((ROOT / "helm" / "raysys" / "values.yaml").read_text(encoding="utf-8"))
    version = _pyproject_ray_version()
    assert values["rayVersion"] == version
    assert values["image"]["tag"] == f"{version}-py311-cpu"
    assert values["image"]["gpuTag"] == f"{version}-py311-gpu"
    chart = yaml.safe_load((ROOT / "helm" / "raysys" / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["appVersion"] == version
