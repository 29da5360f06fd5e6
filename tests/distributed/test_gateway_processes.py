"""`fitroom serve --processes N`: several gateway processes on one port in distributed mode (its
state is in Redis), refused in embedded mode (its queue and pipeline live in one process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.common.config import PROJECT_ROOT
from tests.gateway.helpers import fitroom, free_port, wait_until
from tests.redis_server import redis_server

pytestmark = pytest.mark.distributed


def children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    found: list[int] = []
    for task in tasks.iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def test_two_gateway_processes_share_one_port_and_one_state(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as redis:
        env = {
            **os.environ,
            "FITROOM_MODE": "distributed",
            "FITROOM_REDIS_URL": redis.url,
            "FITROOM_STORAGE": "local",
            "FITROOM_DATA_DIR": str(tmp_path / "data"),
        }
        port = free_port()
        command = [sys.executable, "-m", "services.cli", "serve", "--port", str(port), "--processes", "2"]
        with open(tmp_path / "serve.log", "wb") as log:
            server = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"

            def ready() -> bool:
                try:
                    return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            assert wait_until(ready, 120, interval=0.2), (tmp_path / "serve.log").read_text()[-3000:]
            assert wait_until(lambda: len(children(server.pid)) >= 2, 30, interval=0.2)
            key = json.loads(fitroom("keys", "create", "--tenant", "acme", "--json", env=env).stdout)
            headers = {"Authorization": f"Bearer {key['api_key']}"}
            with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
                # New connections land on either process; every one sees the key and the same garments.
                answers = [client.get("/v1/garments", headers={"Connection": "close"}) for _ in range(20)]
            assert [a.status_code for a in answers] == [200] * 20
        finally:
            server.terminate()
            server.wait(30)


def test_several_processes_are_refused_in_embedded_mode(tmp_path: Path) -> None:
    env = {**os.environ, "FITROOM_MODE": "embedded", "FITROOM_DATA_DIR": str(tmp_path)}
    result = fitroom("serve", "--port", str(free_port()), "--processes", "2", env=env)
    assert result.returncode == 2
    assert "--processes over 1 needs FITROOM_MODE=distributed" in result.stderr
