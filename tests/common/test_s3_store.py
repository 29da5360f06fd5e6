"""S3ArtifactStore against a real SeaweedFS: the local store's contract, presigned URLs, outages,
credentials, prefixes, concurrency and forks. Pagination past 1000 keys runs on moto (in process)."""

from __future__ import annotations

import http.server
import multiprocessing
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from moto import mock_aws

from services.common.artifacts import (
    ArtifactNotFound,
    ArtifactStore,
    LocalArtifactStore,
    artifact_store,
    get_array,
    get_json,
    put_array,
    put_json,
)
from services.common.errors import StorageUnavailable
from services.common.s3_store import S3ArtifactStore, S3Credentials
from tests.common.test_artifacts import BAD_KEYS
from tests.s3_server import S3Server, seaweedfs


def _s3_store(server: S3Server, **overrides: Any) -> S3ArtifactStore:
    """A store on the server under a prefix of its own, so tests sharing the bucket do not meet."""
    fields = {"s3_prefix": f"test-{uuid.uuid4().hex[:12]}"} | overrides
    return S3ArtifactStore.from_settings(server.settings(**fields), credentials=server.credentials)


@pytest.fixture
def s3_store(s3_server: S3Server) -> S3ArtifactStore:
    return _s3_store(s3_server)


@pytest.fixture(params=["local", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    """Both backends, for the assertions they must answer alike."""
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts")
    return _s3_store(request.getfixturevalue("s3_server"))


@pytest.fixture
def outage_server(tmp_path: Path) -> Iterator[S3Server]:
    """A server of the test's own, free to be stopped (the session's one is shared)."""
    with seaweedfs(tmp_path / "seaweedfs") as server:
        yield server


def _raw_keys(server: S3Server, prefix: str = "") -> list[str]:
    """Every object in the bucket under prefix, as S3 itself lists them."""
    response = server.client().list_objects_v2(Bucket=server.bucket, Prefix=prefix)
    return [obj["Key"] for obj in response.get("Contents", [])]


def _within(seconds: float, call: Any) -> tuple[StorageUnavailable, float]:
    """Run call, expect StorageUnavailable, and return it with the time it took (asserted under seconds)."""
    began = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        call()
    elapsed = time.monotonic() - began
    assert elapsed < seconds, f"took {elapsed:.2f}s, bound {seconds:.2f}s"
    assert info.value.code == "storage_unavailable" and info.value.http_status == 503
    return info.value, elapsed


def _every_operation(store: S3ArtifactStore, but: tuple[str, ...] = ()) -> list[Callable[[], object]]:
    """One call of each operation that reaches the server."""
    calls: dict[str, Callable[[], object]] = {
        "put": lambda: store.put("person/p/new.json", b"{}"),
        "get": lambda: store.get("person/p/pose.json"),
        "exists": lambda: store.exists("person/p/pose.json"),
        "list": lambda: store.list("person/"),
        "delete_prefix": lambda: store.delete_prefix("person/q/"),
        "ping": store.ping,
    }
    return [call for name, call in calls.items() if name not in but]


def _retry_bound(attempts: int, per_attempt_s: float) -> float:
    """The most one call may take: every attempt timing out, plus botocore's standard backoff between
    attempts (random up to 2**(n-1) s before retry n), plus slack for a busy machine."""
    return attempts * per_attempt_s + sum(2**n for n in range(attempts - 1)) + 3.0


# --------------------------------------------------------------------------- the shared contract


def test_roundtrip_and_overwrite(any_store: ArtifactStore) -> None:
    key = "person/0f1e/pose.json"
    assert not any_store.exists(key)
    any_store.put(key, b"first")
    assert any_store.exists(key) and any_store.get(key) == b"first"
    any_store.put(key, b"")
    assert any_store.get(key) == b""
    payload = np.random.default_rng(1).bytes(3 * 1024 * 1024)  # bigger than one read buffer
    any_store.put(key, payload)
    assert any_store.get(key) == payload
    assert any_store.list() == [key]


def test_missing_key(any_store: ArtifactStore) -> None:
    any_store.put("person/abc/pose.json", b"{}")
    for key in ("person/abc/mask.npy", "person/abc", "person", "person/abc/pose.json/deeper", "nothing"):
        with pytest.raises(ArtifactNotFound) as info:
            any_store.get(key)
        assert isinstance(info.value, KeyError)
        assert key in str(info.value)
        assert not any_store.exists(key)


def test_array_and_json_helpers(s3_store: S3ArtifactStore) -> None:
    mask = np.random.default_rng(0).random((7, 5, 3)).astype(np.float32)
    put_array(s3_store, "garment/x/mask.npy", mask)
    got = get_array(s3_store, "garment/x/mask.npy")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, mask)
    pose = {"score": 0.93, "keypoints": [[1.5, 2.0], [3, 4]], "name": "ü"}
    put_json(s3_store, "person/y/pose.json", pose)
    assert get_json(s3_store, "person/y/pose.json") == pose
    with pytest.raises(ArtifactNotFound):
        get_json(s3_store, "person/y/missing.json")


@pytest.mark.parametrize("key", BAD_KEYS)
def test_unsafe_keys_are_refused(s3_server: S3Server, s3_store: S3ArtifactStore, key: str) -> None:
    calls = [
        lambda: s3_store.put(key, b"x"),
        lambda: s3_store.get(key),
        lambda: s3_store.exists(key),
        lambda: s3_store.presigned_url(key),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert _raw_keys(s3_server, s3_store.prefix) == []


@pytest.mark.parametrize("prefix", ["..", "../", "/", "/etc", "a//", "a/../", "a\\", ".x", "a/.."])
def test_unsafe_prefixes_are_refused(s3_store: S3ArtifactStore, prefix: str) -> None:
    with pytest.raises(ValueError):
        s3_store.list(prefix)
    with pytest.raises(ValueError):
        s3_store.delete_prefix(prefix)


def test_list_uses_plain_string_prefixes(any_store: ArtifactStore) -> None:
    keys = ["person/aa1/pose.json", "person/aa1/mask.npy", "person/aa2/pose.json", "person/b/x", "garment/g/m"]
    for key in keys:
        any_store.put(key, key.encode())
    assert any_store.list() == sorted(keys)
    assert any_store.list("person/") == sorted(k for k in keys if k.startswith("person/"))
    assert any_store.list("person/aa") == ["person/aa1/mask.npy", "person/aa1/pose.json", "person/aa2/pose.json"]
    assert any_store.list("person/aa1/") == ["person/aa1/mask.npy", "person/aa1/pose.json"]
    assert any_store.list("person/aa1/p") == ["person/aa1/pose.json"]
    assert any_store.list("pers") == any_store.list("person/")
    assert any_store.list("nobody/") == []
    assert any_store.list("person/aa1/pose.json/") == []


def test_delete_prefix(any_store: ArtifactStore) -> None:
    for key in ["person/aa1/pose.json", "person/aa1/mask.npy", "person/aa2/pose.json", "garment/g/m"]:
        any_store.put(key, b"x")
    assert any_store.delete_prefix("person/aa1/") == 2
    assert any_store.list() == ["garment/g/m", "person/aa2/pose.json"]
    assert any_store.delete_prefix("person/aa1/") == 0
    assert any_store.delete_prefix("person/") == 1
    assert any_store.delete_prefix("") == 1
    assert any_store.list() == []
    any_store.put("person/aa1/pose.json", b"again")
    assert any_store.get("person/aa1/pose.json") == b"again"


def test_concurrent_writers_and_readers_of_one_key(s3_store: S3ArtifactStore) -> None:
    key = "person/race/mask.npy"
    payloads = [bytes([i]) * (256 * 1024 + i) for i in range(8)]
    s3_store.put(key, payloads[0])
    errors: list[BaseException] = []
    torn: list[int] = []
    start = threading.Barrier(len(payloads) + 2)

    def writer(payload: bytes) -> None:
        try:
            start.wait()
            for _ in range(4):
                s3_store.put(key, payload)
        except BaseException as e:
            errors.append(e)

    def reader() -> None:
        try:
            start.wait()
            for _ in range(20):
                if s3_store.get(key) not in payloads:
                    torn.append(1)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and torn == []
    assert s3_store.get(key) in payloads
    assert s3_store.list() == [key]


# --------------------------------------------------------------------------- S3 specifics


def test_prefix_isolation(s3_server: S3Server) -> None:
    deployment = f"iso-{uuid.uuid4().hex[:8]}"
    blue = _s3_store(s3_server, s3_prefix=f"{deployment}/blue/")  # a trailing "/" is optional
    green = _s3_store(s3_server, s3_prefix=f"{deployment}/green")
    whole = _s3_store(s3_server, s3_prefix=deployment)
    blue.put("person/p/pose.json", b"blue")
    green.put("person/p/pose.json", b"green")
    assert blue.get("person/p/pose.json") == b"blue" and green.get("person/p/pose.json") == b"green"
    assert blue.list() == ["person/p/pose.json"]
    assert whole.list() == ["blue/person/p/pose.json", "green/person/p/pose.json"]
    assert sorted(_raw_keys(s3_server, deployment + "/")) == [
        f"{deployment}/blue/person/p/pose.json",
        f"{deployment}/green/person/p/pose.json",
    ]
    assert blue.delete_prefix("") == 1
    assert green.get("person/p/pose.json") == b"green"
    assert whole.list() == ["green/person/p/pose.json"]


@pytest.mark.parametrize("prefix", ["..", "a//b", "a b", ".hidden", "a/../b"])
def test_unsafe_store_prefix_is_refused(s3_server: S3Server, prefix: str) -> None:
    with pytest.raises(ValueError, match="FITROOM_S3_PREFIX"):
        S3ArtifactStore.from_settings(s3_server.settings(s3_prefix=prefix))


def test_list_skips_objects_the_store_could_not_have_written(s3_server: S3Server, s3_store: S3ArtifactStore) -> None:
    s3_store.put("person/p/pose.json", b"{}")
    client = s3_server.client()
    for foreign in ("person/", "person/p/with space.png", "person/.hidden"):  # a console's folder marker etc.
        client.put_object(Bucket=s3_server.bucket, Key=s3_store.prefix + foreign, Body=b"")
    assert s3_store.list() == ["person/p/pose.json"]
    assert s3_store.delete_prefix("") == 1


def test_presigned_url_works_then_expires(s3_store: S3ArtifactStore) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    s3_store.put("result/job1/tryon.png", png)
    with urllib.request.urlopen(s3_store.presigned_url("result/job1/tryon.png"), timeout=10) as response:
        assert response.read() == png
        assert response.headers["Content-Type"] == "image/png"  # set at put, so browsers show it

    short = s3_store.presigned_url("result/job1/tryon.png", expires_s=1)
    with urllib.request.urlopen(short, timeout=10) as response:
        assert response.read() == png
    time.sleep(2.2)  # SigV4 times have one-second resolution
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(short, timeout=10)
    assert info.value.code == 403


def test_presigned_url_default_expiry_and_limits(s3_server: S3Server) -> None:
    store = _s3_store(s3_server, s3_presign_expiry_s=900)
    assert "X-Amz-Expires=900" in store.presigned_url("k")
    assert "X-Amz-Expires=60" in store.presigned_url("k", expires_s=60)
    for bad in (0, -5, 8 * 24 * 3600):
        with pytest.raises(ValueError, match="expiry"):
            store.presigned_url("k", expires_s=bad)


def test_wrong_credentials(s3_server: S3Server) -> None:
    settings = s3_server.settings(s3_prefix="creds", s3_max_attempts=3, s3_timeout_s=2)
    for credentials in (S3Credentials(s3_server.access_key, "wrong-secret"), S3Credentials("AKUNKNOWN", "x")):
        store = S3ArtifactStore.from_settings(settings, credentials=credentials)
        for call in _every_operation(store):
            error, _ = _within(_retry_bound(3, 2), call)
            assert "refused the credentials" in error.message and s3_server.endpoint_url in error.message
    assert _raw_keys(s3_server, "creds/") == []


def test_no_credentials_at_all(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3ArtifactStore.from_settings(s3_server.settings())
    error, _ = _within(5, lambda: store.get("k"))
    assert "no usable S3 credentials" in error.message
    _within(5, lambda: store.presigned_url("k"))


def test_credentials_from_the_environment_through_the_factory(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.environ().items():
        monkeypatch.setenv(name, value)
    store = artifact_store(s3_server.settings(s3_prefix=f"env-{uuid.uuid4().hex[:8]}"))
    assert isinstance(store, S3ArtifactStore)
    store.put("a/b", b"through boto3's default chain")
    assert store.get("a/b") == b"through boto3's default chain"


def test_missing_bucket_then_ensure_bucket(s3_server: S3Server) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:8]}"
    store = _s3_store(s3_server, s3_bucket=bucket)
    for call in _every_operation(store, but=("exists",)):  # HEAD's bare 404 cannot tell bucket from key
        error, _ = _within(_retry_bound(2, 5), call)
        assert f"bucket {bucket!r} does not exist" in error.message
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    store.ping()
    store.put("k", b"x")
    assert store.get("k") == b"x"


def test_stopped_server_then_recovery(outage_server: S3Server) -> None:
    store = _s3_store(outage_server, s3_max_attempts=3, s3_timeout_s=1)
    store.put("person/p/pose.json", b"before the outage")
    outage_server.stop()
    for call in _every_operation(store):
        error, _ = _within(_retry_bound(3, 1), call)
        assert "unreachable" in error.message and outage_server.endpoint_url in error.message
    outage_server.start()
    store.ping()  # the same store object: its client reconnects by itself
    assert store.get("person/p/pose.json") == b"before the outage"
    store.put("person/p/mask.npy", b"after")
    assert store.list() == ["person/p/mask.npy", "person/p/pose.json"]


def test_unresponsive_server_times_out(s3_server: S3Server) -> None:
    """A host that takes the connection and never answers (a hung process, a black-holed route)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes connections from its backlog; nobody ever reads them
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        store = _s3_store(s3_server, s3_endpoint_url=endpoint, s3_timeout_s=0.5, s3_max_attempts=2)
        error, elapsed = _within(_retry_bound(2, 0.5), lambda: store.get("k"))
    assert "timed out" in error.message and "0.5s timeout" in error.message
    assert elapsed >= 2 * 0.5  # it did wait out the read timeout, on each attempt


class _SlowDownHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request as S3 does when throttling: 503 SlowDown."""

    requests: list[str]

    def _slow_down(self) -> None:
        type(self).requests.append(self.command)
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _slow_down  # noqa: N815 (http.server's names)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean


def test_throttling_is_retried_then_storage_unavailable(s3_server: S3Server) -> None:
    _SlowDownHandler.requests = []
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowDownHandler) as throttled:
        threading.Thread(target=throttled.serve_forever, daemon=True).start()
        try:
            endpoint = f"http://127.0.0.1:{throttled.server_address[1]}"
            store = _s3_store(s3_server, s3_endpoint_url=endpoint, s3_max_attempts=2, s3_timeout_s=2)
            error, _ = _within(_retry_bound(2, 2), lambda: store.put("k", b"x"))
        finally:
            throttled.shutdown()
    assert "is failing" in error.message and "503 SlowDown" in error.message
    assert _SlowDownHandler.requests == ["PUT"] * 2  # s3_max_attempts attempts in all, the first included


def test_settings_reach_the_client(s3_server: S3Server) -> None:
    store = _s3_store(s3_server, s3_timeout_s=7, s3_max_attempts=6, s3_region="eu-west-3")
    config = store.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (7, 7)
    assert config.retries == {"total_max_attempts": 6, "mode": "standard"}  # the first try included
    assert config.signature_version == "s3v4"
    assert store.client.meta.region_name == "eu-west-3"
    assert store.client.meta.endpoint_url == s3_server.endpoint_url


def test_one_client_per_process_shared_by_threads(s3_store: S3ArtifactStore) -> None:
    clients: list[object] = []
    threads = [threading.Thread(target=lambda: clients.append(s3_store.client)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in clients}) == 1


def _use_store_in_forked_child(store: S3ArtifactStore, parent_client: object) -> None:
    if store.client is parent_client:
        raise SystemExit(3)  # the parent's client (and its pooled sockets) crossed the fork
    store.put("forked/child", b"written by the child")
    raise SystemExit(0)


def test_client_is_remade_after_fork(s3_store: S3ArtifactStore) -> None:
    """Celery's prefork pool forks after the store is made (and maybe used)."""
    s3_store.put("forked/parent", b"x")
    child = multiprocessing.get_context("fork").Process(
        target=_use_store_in_forked_child, args=(s3_store, s3_store.client)
    )
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert s3_store.get("forked/child") == b"written by the child"
    s3_store.put("forked/parent", b"the parent's client still works")


# --------------------------------------------------------------------------- pagination (moto)


@pytest.fixture
def moto_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3ArtifactStore]:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with mock_aws():
        store = S3ArtifactStore("fitroom-moto", prefix="deploy", credentials=S3Credentials("testing", "testing"))
        store.ensure_bucket()
        yield store


def test_list_and_delete_paginate_past_1000_keys(moto_store: S3ArtifactStore) -> None:
    keys = [f"job/{i // 1000}/{i:05d}.bin" for i in range(1500)]
    for key in keys:
        moto_store.put(key, b"")
    moto_store.put("other/k", b"")
    calls: dict[str, list[int]] = {"ListObjectsV2": [], "DeleteObjects": []}

    def count(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "DeleteObjects":
            calls["DeleteObjects"].append(len(params["Delete"]["Objects"]))
        else:
            calls["ListObjectsV2"].append(1)

    events = moto_store.client.meta.events
    events.register("provide-client-params.s3.ListObjectsV2", count)
    events.register("provide-client-params.s3.DeleteObjects", count)

    assert moto_store.list("job/") == keys
    assert len(calls["ListObjectsV2"]) == 2
    assert moto_store.list("job/1/") == keys[1000:]
    calls["ListObjectsV2"].clear()

    assert moto_store.delete_prefix("job/") == 1500
    assert calls["DeleteObjects"] == [1000, 500]
    assert moto_store.list() == ["other/k"]
