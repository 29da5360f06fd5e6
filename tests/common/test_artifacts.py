"""LocalArtifactStore: roundtrips, strict keys, atomic and concurrent writes, prefixes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from services.common import artifacts
from services.common.artifacts import (
    ArtifactNotFound,
    ArtifactStore,
    LocalArtifactStore,
    get_array,
    get_json,
    put_array,
    put_json,
    sha256_hex,
)


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


class DictStore:
    """A second backend, to show the helpers work over any ArtifactStore."""

    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}

    def put(self, key: str, data: bytes) -> None:
        self.items[artifacts.validate_key(key)] = bytes(data)

    def get(self, key: str) -> bytes:
        try:
            return self.items[key]
        except KeyError:
            raise ArtifactNotFound(key) from None

    def exists(self, key: str) -> bool:
        return key in self.items

    def delete_prefix(self, prefix: str) -> int:
        doomed = self.list(prefix)
        for key in doomed:
            del self.items[key]
        return len(doomed)

    def list(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.items if k.startswith(prefix))


def test_sha256_hex() -> None:
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_bytes_roundtrip_and_overwrite(store: LocalArtifactStore) -> None:
    key = f"person/{sha256_hex(b'photo')}/pose.json"
    assert not store.exists(key)
    store.put(key, b"first")
    assert store.exists(key) and store.get(key) == b"first"
    store.put(key, b"")
    assert store.get(key) == b""
    assert _files(store.root) == [key]  # no temp files left behind


def test_missing_key(store: LocalArtifactStore) -> None:
    store.put("person/abc/pose.json", b"{}")
    for key in ("person/abc/mask.npy", "person/abc", "person/abc/pose.json/deeper", "nothing"):
        with pytest.raises(ArtifactNotFound) as info:
            store.get(key)
        assert isinstance(info.value, KeyError)
        assert key in str(info.value)
        assert not store.exists(key)


@pytest.mark.parametrize("backend", ["local", "dict"])
def test_array_and_json_helpers_over_any_store(tmp_path: Path, backend: str) -> None:
    store: ArtifactStore = LocalArtifactStore(tmp_path) if backend == "local" else DictStore()
    assert isinstance(store, ArtifactStore)
    mask = np.random.default_rng(0).random((7, 5, 3)).astype(np.float32)
    put_array(store, "garment/x/mask.npy", mask)
    got = get_array(store, "garment/x/mask.npy")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, mask)
    keypoints = np.arange(33 * 4, dtype=np.float64).reshape(33, 4)[::2].T  # non-contiguous view
    put_array(store, "person/y/kp.npy", keypoints)
    np.testing.assert_array_equal(get_array(store, "person/y/kp.npy"), keypoints)

    pose = {"score": 0.93, "keypoints": [[1.5, 2.0], [3, 4]], "name": "ü"}
    put_json(store, "person/y/pose.json", pose)
    assert get_json(store, "person/y/pose.json") == pose
    put_json(store, "a.json", {"b": 1, "a": 2})
    assert store.get("a.json") == b'{"a":2,"b":1}'  # deterministic bytes for equal objects
    with pytest.raises(ArtifactNotFound):
        get_json(store, "person/y/missing.json")


def test_helpers_refuse_pickles_and_nan(store: LocalArtifactStore) -> None:
    with pytest.raises(ValueError):
        put_array(store, "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        put_json(store, "nan.json", {"x": float("nan")})
    assert store.list() == []


BAD_KEYS = [
    "",
    "..",
    "../escape",
    "a/../../escape",
    "a/./b",
    "/etc/passwd",
    "a\\..\\b",
    "C:/windows",
    "a//b",
    "a/",
    "/",
    ".hidden",
    "a/.b.tmp",
    "with space",
    "ümlaut",
    "nul\x00byte",
    "new\nline",
    "x" * 201,
    "/".join(["a"] * 600),
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_unsafe_keys_are_refused_everywhere(tmp_path: Path, key: str) -> None:
    store = LocalArtifactStore(tmp_path / "root")
    for call in (lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.exists(key)):
        with pytest.raises(ValueError):
            call()
    assert not any(tmp_path.rglob("*"))  # nothing written anywhere, inside or outside the root


@pytest.mark.parametrize("prefix", ["..", "../", "/", "/etc", "a//", "a/../", "a\\", ".x", "a/.."])
def test_unsafe_prefixes_are_refused(store: LocalArtifactStore, prefix: str) -> None:
    with pytest.raises(ValueError):
        store.list(prefix)
    with pytest.raises(ValueError):
        store.delete_prefix(prefix)


def test_list_uses_plain_string_prefixes(store: LocalArtifactStore) -> None:
    keys = [
        "person/aa1/pose.json",
        "person/aa1/mask.npy",
        "person/aa2/pose.json",
        "person/b/x",
        "garment/g/m",
    ]
    for key in keys:
        store.put(key, key.encode())
    assert store.list() == sorted(keys)
    assert store.list("person/") == sorted(k for k in keys if k.startswith("person/"))
    assert store.list("person/aa") == ["person/aa1/mask.npy", "person/aa1/pose.json", "person/aa2/pose.json"]
    assert store.list("person/aa1/") == ["person/aa1/mask.npy", "person/aa1/pose.json"]
    assert store.list("person/aa1/p") == ["person/aa1/pose.json"]
    assert store.list("pers") == store.list("person/")
    assert store.list("nobody/") == []
    assert store.list("person/aa1/pose.json/") == []  # a file, not a folder


def test_list_on_missing_root(tmp_path: Path) -> None:
    assert LocalArtifactStore(tmp_path / "never-created").list() == []


def test_delete_prefix(store: LocalArtifactStore) -> None:
    for key in ["person/aa1/pose.json", "person/aa1/mask.npy", "person/aa2/pose.json", "garment/g/m"]:
        store.put(key, b"x")
    assert store.delete_prefix("person/aa1/") == 2
    assert store.list() == ["garment/g/m", "person/aa2/pose.json"]
    assert not (store.root / "person" / "aa1").exists()  # emptied folders go too
    assert store.delete_prefix("person/aa1/") == 0
    assert store.delete_prefix("person/") == 1
    assert store.delete_prefix("") == 1
    assert store.list() == []
    store.put("person/aa1/pose.json", b"again")  # folders come back on demand
    assert store.get("person/aa1/pose.json") == b"again"


def test_failed_write_leaves_old_value_and_no_temp_file(
    store: LocalArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("k/v", b"old")

    def crash(src: str, dst: str) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(artifacts.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        store.put("k/v", b"new" * 1000)
    monkeypatch.undo()
    assert store.get("k/v") == b"old"
    assert _files(store.root) == ["k/v"]


def test_stray_temp_files_are_invisible(store: LocalArtifactStore) -> None:
    store.put("k/v", b"x")
    (store.root / "k" / ".v.crashed.tmp").write_bytes(b"half")  # what a crash mid-write leaves
    assert store.list() == ["k/v"]
    assert store.delete_prefix("k/") == 1


def test_files_are_readable_by_other_services(store: LocalArtifactStore) -> None:
    store.put("k/v", b"x")
    assert os.stat(store.root / "k" / "v").st_mode & 0o777 == 0o644


def test_concurrent_writers_and_readers_of_one_key(store: LocalArtifactStore) -> None:
    key = "person/race/mask.npy"
    payloads = [bytes([i]) * (256 * 1024 + i) for i in range(12)]
    store.put(key, payloads[0])
    errors: list[BaseException] = []
    torn: list[int] = []
    start = threading.Barrier(len(payloads) + 4)

    def writer(payload: bytes) -> None:
        try:
            start.wait()
            for _ in range(10):
                store.put(key, payload)
        except BaseException as e:
            errors.append(e)

    def reader() -> None:
        try:
            start.wait()
            for _ in range(200):
                if store.get(key) not in payloads:
                    torn.append(1)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    threads += [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and torn == []
    assert store.get(key) in payloads
    assert _files(store.root) == [key]


def test_concurrent_put_and_delete_prefix(store: LocalArtifactStore) -> None:
    """delete_prefix removes emptied folders; a writer racing it must recreate them, not fail."""
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(100):
                store.put(f"person/p{n}/step{i % 3}.bin", b"x")
        except BaseException as e:
            errors.append(e)

    def deleter() -> None:
        try:
            for _ in range(100):
                store.delete_prefix("person/")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)] + [threading.Thread(target=deleter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(not name.split("/")[-1].startswith(".") for name in _files(store.root))


def test_from_settings_uses_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common import config

    monkeypatch.setenv("FITROOM_DATA_DIR", str(tmp_path))
    config.get_settings.cache_clear()
    try:
        assert LocalArtifactStore.from_settings().root == tmp_path / "artifacts"
    finally:
        monkeypatch.undo()
        config.get_settings.cache_clear()
