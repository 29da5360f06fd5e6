"""The Triton backend: the `Infer` call of LocalBackend, executed by a Triton Inference Server.

Inputs are checked against the local triton_models/<name>/config.pbtxt before anything is sent
(a caller's bug fails here, with the same ValueError as LocalBackend); outputs come back by
config name and order, in the config's dtypes, as writable arrays.

Failures split in three:
- transient (connection refused or reset, timeout, server unavailable, model not ready yet):
  retried `retries` times with doubling backoff, then InferenceUnavailable naming the URL;
- the server does not know the model: ModelUnavailable, at once;
- anything else the server refuses (a bad request: a bug): FitroomError (internal_error), at once.

Clients are made lazily, one per process: a Celery prefork child must not use the gRPC channel
its parent made before the fork. gRPC channels are thread-safe and shared by the process's
threads; the HTTP client (geventhttpclient, bound to the gevent hub of its thread) is one per
thread.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from google.protobuf import text_format
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from services.common.config import Settings, get_settings
from services.common.errors import FitroomError, InferenceUnavailable, ModelUnavailable
from services.common.inference import check_inputs
from services.common.model_repository import ModelSignature, read_signature

Protocol = Literal["grpc", "http"]
T = TypeVar("T")

# Server answers worth another try: it is (re)starting, overloaded, or the call timed out.
_TRANSIENT_STATUSES = frozenset(
    {
        "StatusCode.UNAVAILABLE",
        "StatusCode.DEADLINE_EXCEEDED",
        "StatusCode.RESOURCE_EXHAUSTED",
        "StatusCode.ABORTED",
        "429",
        "502",
        "503",
        "504",
    }
)
_NOT_FOUND_STATUSES = frozenset({"StatusCode.NOT_FOUND", "404"})
# tritonclient's own channel options, plus a short reconnect backoff: by default a channel that
# lost its server waits up to 120 s between reconnection attempts, so a Triton restart would
# keep failing fast with UNAVAILABLE long after the server is back.
_GRPC_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class _Transient(Exception):
    """A failure worth retrying; `cause` says what it was, for the final error message."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class TritonBackend:
    """`infer(model, {input: array}) -> {output: array}` over tritonclient (gRPC or HTTP)."""

    def __init__(
        self,
        url: str,
        protocol: Protocol = "grpc",
        repository: Path | None = None,
        timeout_s: float = 30.0,
        retries: int = 3,
        retry_backoff_s: float = 0.5,
    ) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"Triton protocol must be 'grpc' or 'http', not {protocol!r}")
        self.url = url
        self.protocol = protocol
        self.repository = Path(repository) if repository is not None else get_settings().model_repository
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self._signatures: dict[str, ModelSignature] = {}
        self._lock = threading.Lock()
        self._grpc_client: tuple[int, Any] | None = None  # (pid that made it, client)
        self._http_clients = threading.local()  # .client: (pid that made it, client)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> TritonBackend:
        settings = settings or get_settings()
        return cls(
            settings.triton_url,
            settings.triton_protocol,
            settings.model_repository,
            timeout_s=settings.triton_timeout_s,
            retries=settings.triton_retries,
            retry_backoff_s=settings.triton_retry_backoff_s,
        )

    def __repr__(self) -> str:
        return f"TritonBackend({self.protocol}://{self.url})"

    # ------------------------------------------------------------------ public API

    def load(self, name: str) -> ModelSignature:
        """The model's signature, once the server says the model is ready (warm-up and readiness).

        ModelUnavailable when the config is missing here, when the server does not know the
        model, or when it never became ready; InferenceUnavailable when the server cannot be reached.
        """
        signature = self.signature(name)

        def model_ready() -> None:
            if not self._client().is_model_ready(name, **self._timeout_kwargs()):
                # Unknown to the server (NOT_FOUND, raised here) or known but still loading (retried).
                self._client().get_model_metadata(name, **self._timeout_kwargs())
                raise _Transient(f"model {name!r} is not ready")

        try:
            self._with_retries(name, model_ready)
        except InferenceUnavailable as exc:
            if self.ready():
                raise ModelUnavailable(f"model {name!r} never became ready on Triton at {self.url}") from exc
            raise
        return signature

    def ready(self) -> bool:
        """Whether the server answers that it is ready (one attempt, no retries, never raises)."""
        try:
            return bool(self._client().is_server_ready(**self._timeout_kwargs()))
        except (InferenceServerException, OSError, http.client.HTTPException):
            return False

    def signature(self, name: str) -> ModelSignature:
        """Names, dims and types of the model, from the local config.pbtxt (read once)."""
        with self._lock:
            if name not in self._signatures:
                try:
                    self._signatures[name] = read_signature(self.repository, name)
                except (OSError, ValueError, text_format.ParseError) as exc:
                    raise ModelUnavailable(
                        f"model {name!r} has no readable config.pbtxt in {self.repository} ({exc.__class__.__name__})"
                    ) from exc
            return self._signatures[name]

    def __call__(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        signature = self.signature(model)
        check_inputs(signature, inputs)
        arrays = {spec.name: np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype) for spec in signature.inputs}

        def infer() -> dict[str, np.ndarray]:
            result = self._infer(model, signature, arrays)
            # Copies: tritonclient's arrays are read-only views of the response buffer.
            return {spec.name: np.array(result.as_numpy(spec.name), dtype=spec.dtype) for spec in signature.outputs}

        return self._with_retries(model, infer)

    # ------------------------------------------------------------------ transport

    def _infer(self, model: str, signature: ModelSignature, arrays: dict[str, np.ndarray]) -> Any:
        module = self._module()
        requested = []
        for spec in signature.inputs:
            array = arrays[spec.name]
            tensor = module.InferInput(spec.name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            requested.append(tensor)
        if self.protocol == "http":
            outputs = [module.InferRequestedOutput(spec.name, binary_data=True) for spec in signature.outputs]
        else:
            outputs = [module.InferRequestedOutput(spec.name) for spec in signature.outputs]
        return self._client().infer(model, requested, outputs=outputs, **self._timeout_kwargs())

    def _module(self) -> Any:
        """tritonclient.grpc or tritonclient.http, imported only when used (http pulls in gevent)."""
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    def _timeout_kwargs(self) -> dict[str, float]:
        # gRPC takes a deadline per call; the HTTP client's timeouts are set when it is made.
        return {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

    def _client(self) -> Any:
        """This process's gRPC client, or this thread's HTTP client; made on first use."""
        pid = os.getpid()
        if self.protocol == "grpc":
            with self._lock:
                if self._grpc_client is None or self._grpc_client[0] != pid:
                    # A client inherited through fork is dropped, never closed: its channel belongs to the parent.
                    client = self._module().InferenceServerClient(self.url, channel_args=_GRPC_CHANNEL_ARGS)
                    self._grpc_client = (pid, client)
                return self._grpc_client[1]
        made: tuple[int, Any] | None = getattr(self._http_clients, "client", None)
        if made is None or made[0] != pid:
            if made is not None:  # forked: the gevent hub this thread inherited still waits on the parent's loop
                import gevent

                gevent.reinit()
            client = self._module().InferenceServerClient(
                self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
            )
            made = self._http_clients.client = (pid, client)
        return made[1]

    def _with_retries(self, model: str, call: Callable[[], T]) -> T:
        """`call()`, retried on transient failures; the other failures mapped to their errors at once."""
        attempts = self.retries + 1
        cause = ""
        for attempt in range(attempts):
            try:
                return call()
            except _Transient as exc:
                cause = exc.cause
            except InferenceServerException as exc:
                status = str(exc.status())
                if status in _NOT_FOUND_STATUSES:
                    raise ModelUnavailable(f"Triton at {self.url} has no model {model!r}: {exc.message()}") from exc
                if status not in _TRANSIENT_STATUSES:
                    raise FitroomError(f"Triton at {self.url} refused {model!r} ({status}): {exc.message()}") from exc
                cause = f"{status}: {exc.message()}"
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, closed mid-answer
                cause = f"{exc.__class__.__name__}: {exc}"
            if attempt + 1 < attempts:
                time.sleep(self.retry_backoff_s * 2**attempt)
        raise InferenceUnavailable(
            f"Triton at {self.url} ({self.protocol}) unavailable for {model!r} after {attempts} attempts: {cause}"
        )
