"""Content-addressed artifact storage: stage outputs keyed by a hash of their inputs.

Stages store intermediate results (pose keypoints, parse masks, warped garments) under keys like
"person/<sha256 of the photo>/pose.json", so repeating a request reuses them. The pipeline sees only
the ArtifactStore protocol: LocalArtifactStore serves embedded mode and an S3 store can implement
the same five methods. Keys and prefixes follow S3 semantics ("/" is a convention, a prefix is a
plain string prefix), so every backend answers alike. The array and JSON helpers are written once,
over any store.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from services.common.config import Settings, get_settings

# No leading dot: that rules out "." and ".." and keeps our ".<name>.*.tmp" files out of the key space.
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_MAX_KEY_LEN = 1024  # S3's limit
_MAX_SEGMENT_LEN = 200  # under NAME_MAX (255) with room for the temp-file prefix and suffix


class ArtifactNotFound(KeyError):
    """No artifact under this key. A KeyError, so mapping-style callers can catch either."""

    def __str__(self) -> str:  # KeyError's own str() is just the repr of the key
        return f"no artifact at {self.args[0]!r}" if self.args else "artifact not found"


@runtime_checkable
class ArtifactStore(Protocol):
    """What the pipeline needs from storage. Backends must validate keys with validate_key."""

    def put(self, key: str, data: bytes) -> None:
        """Store data under key, replacing any previous value atomically."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes under key; ArtifactNotFound when there are none."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key that starts with prefix; return how many were deleted."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Every key that starts with prefix, sorted."""
        ...


def validate_key(key: str) -> str:
    """Return key if it is a safe relative path of [A-Za-z0-9._-] segments, else raise ValueError.

    Strict on purpose: keys become file paths, so they must not escape the root ("..", "/etc",
    "a\\b"), alias one another ("a//b", "a/./b") or collide with temp files (leading ".").
    """
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY_LEN:
        raise ValueError(f"invalid artifact key {key!r}: expected a string of 1 to {_MAX_KEY_LEN} characters")
    for segment in key.split("/"):
        if len(segment) > _MAX_SEGMENT_LEN or not _SEGMENT.fullmatch(segment):
            raise ValueError(
                f"invalid artifact key {key!r}: segment {segment!r} must be 1 to {_MAX_SEGMENT_LEN} "
                "characters of [A-Za-z0-9._-], not starting with '.'"
            )
    return key


def split_prefix(prefix: str) -> tuple[str, str]:
    """Split a prefix into its folder part (a valid key, or "") and a partial last segment."""
    if not isinstance(prefix, str):
        raise ValueError(f"invalid artifact prefix {prefix!r}")
    folder, slash, partial = prefix.rpartition("/")
    if slash:
        validate_key(folder)  # also refuses a leading "/"
    if partial and (len(partial) > _MAX_SEGMENT_LEN or not _SEGMENT.fullmatch(partial)):
        raise ValueError(f"invalid artifact prefix {prefix!r}")
    return folder, partial


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of data: the content address used in keys."""
    return hashlib.sha256(data).hexdigest()


def image_digest(image: np.ndarray) -> str:
    """Content address of decoded pixels and their shape: a re-encoded upload of the same pixels
    hits the same entries."""
    return sha256_hex(np.ascontiguousarray(image).tobytes() + str(image.shape).encode())


def put_array(store: ArtifactStore, key: str, arr: np.ndarray) -> None:
    """Store an array in .npy format; object arrays are refused (loading them would unpickle)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    store.put(key, buf.getvalue())


def get_array(store: ArtifactStore, key: str) -> np.ndarray:
    return np.load(io.BytesIO(store.get(key)), allow_pickle=False)


def put_json(store: ArtifactStore, key: str, obj: Any) -> None:
    """Store obj as strict JSON (NaN refused, keys sorted so equal objects give equal bytes)."""
    store.put(key, json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())


def get_json(store: ArtifactStore, key: str) -> Any:
    return json.loads(store.get(key))


class LocalArtifactStore:
    """ArtifactStore in a local directory, safe for concurrent threads and processes.

    Writers take no lock: each writes and fsyncs its own temp file beside the target, then
    os.replace()s it in. The rename is atomic, so readers see the old or the new artifact, never a
    mix; the last writer wins; a crash leaves at worst a stray ".*.tmp" file, never a torn artifact.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @classmethod
    def from_settings(cls) -> LocalArtifactStore:
        """The embedded-mode store, under FITROOM_DATA_DIR/artifacts."""
        return cls(get_settings().data_dir / "artifacts")

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        fd, tmp = self._make_temp(path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; other services read artifacts too
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)  # make the rename itself survive a power loss

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_prefix(self, prefix: str) -> int:
        deleted = 0
        for key in self.list(prefix):
            path = self._path(key)
            try:
                path.unlink()
            except FileNotFoundError:
                continue  # a concurrent delete got there first
            deleted += 1
            self._remove_empty_parents(path)
        return deleted

    def list(self, prefix: str = "") -> list[str]:
        folder, partial = split_prefix(prefix)
        base = self._path(folder) if folder else self.root
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            if dirpath == str(base):  # only the top level can fail to match the partial segment
                dirnames[:] = [d for d in dirnames if d.startswith(partial)]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel == "." else f"{rel}/{name}"
                if not name.startswith(".") and key.startswith(prefix):  # ".": writes in flight
                    keys.append(key)
        return sorted(keys)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    @staticmethod
    def _make_temp(path: Path) -> tuple[int, str]:
        # A concurrent delete_prefix may remove an emptied folder while we create it (mkdir then
        # says FileExistsError for a folder that is gone) or before mkstemp (FileNotFoundError).
        attempts = 10
        for attempt in range(attempts):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            except (FileNotFoundError, FileExistsError):
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _remove_empty_parents(self, path: Path) -> None:
        """Drop folders emptied by a delete, so per-request folders do not pile up."""
        parent = path.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                return  # not empty (or already gone)
            parent = parent.parent


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except FileNotFoundError:
        return  # a concurrent delete_prefix already removed the artifact and its folder
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def artifact_store(settings: Settings | None = None) -> ArtifactStore:
    """The store FITROOM_STORAGE names: local disk (embedded default) or S3."""
    settings = settings or get_settings()
    if settings.storage == "s3":
        from services.common.s3_store import S3ArtifactStore  # boto3 is imported only when used

        return S3ArtifactStore.from_settings(settings)
    return LocalArtifactStore(settings.data_dir / "artifacts")
