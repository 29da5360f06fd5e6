"""docker-compose.yml: valid under the Compose specification's schema (as vendored by
check-jsonschema), one worker service per Celery queue, and the one-host promises: Redis with
AOF and noeviction, Triton on a reserved GPU or, with the cpu profile, on the CPU."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from services.distributed.queues import QUEUES
from tests.deploy.manifests import COMPOSE_FILE, Manifest, load_compose, tool


def _check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _seconds(duration: str) -> int:
    assert duration.endswith("s"), duration
    return int(duration[:-1])


def test_compose_file_matches_the_compose_specification() -> None:
    result = _check_compose_schema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_an_unknown_service_key(tmp_path: Path) -> None:
    compose = load_compose()
    compose["services"]["redis"]["restart_policy"] = "always"  # a `deploy:` key, not a service key
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(compose))
    assert _check_compose_schema(broken).returncode != 0


def test_one_worker_service_per_celery_queue() -> None:
    services: dict[str, Manifest] = load_compose()["services"]
    workers = {name: svc for name, svc in services.items() if svc.get("command", [])[:1] == ["worker"]}
    assert sorted(workers) == sorted(f"worker-{queue}" for queue in QUEUES)
    time_limit = int(services["gateway"]["environment"]["FITROOM_TASK_TIME_LIMIT_S"])
    for queue in QUEUES:
        worker = workers[f"worker-{queue}"]
        assert worker["command"] == ["worker", "--stage", queue]
        assert worker["healthcheck"]["test"] == ["CMD", "fitroom", "worker-health", "--stage", queue]
        # Celery's warm shutdown finishes the running task before the container is killed.
        assert _seconds(worker["stop_grace_period"]) > time_limit
        assert worker["environment"]["FITROOM_MODE"] == "distributed"


def test_redis_runs_with_aof_and_noeviction() -> None:
    command = load_compose()["services"]["redis"]["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert flags["--appendonly"] == "yes"
    assert flags["--maxmemory-policy"] == "noeviction"


def test_triton_has_a_gpu_profile_and_a_cpu_profile() -> None:
    services = load_compose()["services"]
    gpu, cpu = services["triton"], services["triton-cpu"]
    assert gpu["profiles"] == ["gpu"]
    assert cpu["profiles"] == ["cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "deploy" not in cpu
    # Workers reach either one as `triton`.
    assert cpu["networks"]["default"]["aliases"] == ["triton"]
    for triton in (gpu, cpu):
        assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
        assert "--model-repository=/models" in triton["command"]
        assert "model-repository:/models:ro" in triton["volumes"]
        assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])


def test_third_party_images_are_pinned() -> None:
    for name, service in load_compose()["services"].items():
        if "build" in service:
            continue  # the fitroom image, built here
        _, _, tag = service["image"].rpartition(":")
        assert tag and tag != "latest" and any(c.isdigit() for c in tag), f"{name}: {service['image']}"
