"""A private redis-server for tests: its own port and directory, never the machine's 6379.

    with redis_server(tmp_path) as server:
        client = connect(server.url)
        server.stop(); server.start()   # SHUTDOWN SAVE and back: the data is still there
        server.kill(); server.start()   # SIGKILL and back: with AOF (fsync always) nothing is lost

The process dies with the test process (PR_SET_PDEATHSIG), so a killed pytest leaves no orphan.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"  # Debian: apt-get install redis-server
_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(port: int, timeout: float) -> redis.Redis:
    # No retries: a refused PING should be seen at once, and SHUTDOWN's closed connection is its answer.
    return redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class RedisProcess:
    """One redis-server child process; start() again after stop() or kill() reuses its port and directory."""

    def __init__(self, workdir: Path, appendonly: bool = True) -> None:
        self.workdir = workdir
        self.appendonly = appendonly
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def start(self, timeout: float = 10) -> None:
        """Start the server and wait until it answers PING (after loading its data)."""
        if self.process is not None:
            raise RuntimeError("redis-server is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--logfile", str(self.log_path),
            "--appendonly", "yes" if self.appendonly else "no",
            # Every write on disk before the reply: kill() then loses nothing, so tests can rely on it.
            "--appendfsync", "always",
            "--save", "",  # no background snapshots; stop() saves on SHUTDOWN
            "--daemonize", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        client = _client(self.port, timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self.process = None
                    raise RuntimeError(f"redis-server exited at start:\n{self._log()}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:  # refused, or still loading its data
                    time.sleep(0.02)
        finally:
            client.close()
        self.kill()
        raise RuntimeError(f"redis-server did not answer PING within {timeout} s:\n{self._log()}")

    def stop(self, timeout: float = 10) -> None:
        """SHUTDOWN SAVE: the server writes its data and exits."""
        if self.process is None:
            return
        client = _client(self.port, timeout=5)
        try:
            client.shutdown(save=True)
        except redis.exceptions.ConnectionError:
            pass  # the server closes the connection as it exits
        finally:
            client.close()
        self.process.wait(timeout)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no chance to save; only what is already on disk survives."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        self.process = None

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def redis_server(workdir: Path, appendonly: bool = True) -> Iterator[RedisProcess]:
    """A started RedisProcess, killed on the way out whatever happened."""
    server = RedisProcess(workdir, appendonly)
    for attempt in range(3):  # the free port may be taken between choosing it and binding it
        try:
            server.start()
            break
        except RuntimeError:
            if attempt == 2:
                raise
            server.port = _free_port()
    try:
        yield server
    finally:
        server.kill()
