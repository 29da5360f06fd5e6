"""One real `fitroom serve` for the gateway tests (started once: loading the models is the slow
part), two tenants, and local stand-ins for an image host and a webhook receiver."""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from skimage import data

from tests.gateway.helpers import Key, LocalHttp, Route, Server, encode, free_port, reply
from tests.warp.drawn import CARDIGAN, LONG_SLEEVE, TANK_TOP, TEE, product_image

# Short webhook backoff so retries take fractions of a second; small limits so the oversize
# cases are cheap to send.
WEBHOOK_BACKOFF_S = 0.3
WEBHOOK_MAX_ATTEMPTS = 4
MAX_IMAGE_BYTES = 3 * 1024 * 1024
MAX_REQUEST_BYTES = 6 * 1024 * 1024
FETCH_TIMEOUT_S = 2.0


@pytest.fixture(scope="session")
def person_jpeg() -> bytes:
    return encode(data.astronaut(), "JPEG")


@pytest.fixture(scope="session")
def tee_png() -> bytes:
    return encode(product_image(TEE), "PNG")


@pytest.fixture(scope="session")
def cat_jpeg() -> bytes:
    return encode(data.chelsea(), "JPEG")


@pytest.fixture(scope="session")
def closed_port() -> int:
    """A loopback port nothing listens on and the server does not allow-list."""
    return free_port()


def _slow(handler: BaseHTTPRequestHandler, _body: bytes) -> None:
    """Headers at once, then a byte a second: only an overall deadline stops this."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.end_headers()
    for _ in range(int(FETCH_TIMEOUT_S * 3)):
        handler.wfile.write(b"\xff")
        handler.wfile.flush()
        time.sleep(1)


def _endless(handler: BaseHTTPRequestHandler, _body: bytes) -> None:
    """A body with no Content-Length that goes on past any limit."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.end_headers()
    chunk = b"\x89PNG\r\n\x1a\n" + bytes(64 * 1024)
    for _ in range(MAX_IMAGE_BYTES // len(chunk) + 20):
        handler.wfile.write(chunk)


@pytest.fixture(scope="session")
def image_host(person_jpeg: bytes, tee_png: bytes, closed_port: int) -> Iterator[LocalHttp]:
    """A retailer's image server, reached over plain http because the server allow-lists it."""
    host = LocalHttp(
        {
            "/astronaut.jpg": reply(200, person_jpeg, "image/jpeg"),
            "/tee.png": reply(200, tee_png, "image/png"),
            "/page.html": reply(200, b"<!DOCTYPE html><html><body>hi</body></html>", "text/html"),
            "/missing.jpg": reply(404, b"not found", "text/plain"),
            "/slow.jpg": _slow,
            "/endless.png": _endless,
            "/to-loopback": reply(302, Location=f"http://127.0.0.1:{closed_port}/secret"),
            "/to-metadata": reply(302, Location="http://169.254.169.254/latest/meta-data/"),
            "/to-file": reply(302, Location="file:///etc/passwd"),
            "/loop": reply(302, Location="/loop"),
            "/to-astronaut": reply(301, Location="/astronaut.jpg"),
        }
    )
    yield host
    host.close()


class Receiver(LocalHttp):
    """A webhook receiver: /ok takes every delivery, /flaky fails the first two, /down fails all."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

        def counting(path: str, failures: int) -> Route:
            def route(handler: BaseHTTPRequestHandler, body: bytes) -> None:
                with self.lock:
                    self.calls[path] = self.calls.get(path, 0) + 1
                    n = self.calls[path]
                reply(500 if n <= failures else 200, b"{}", "application/json")(handler, body)

            return route

        super().__init__({})
        self.routes.update(
            {"/ok": counting("/ok", 0), "/flaky": counting("/flaky", 2), "/down": counting("/down", 10**6)}
        )


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def server_env(allow: list[LocalHttp]) -> dict[str, str]:
    return {
        "FITROOM_URL_ALLOW_HOSTS": ",".join(f"127.0.0.1:{h.port}" for h in allow),
        "FITROOM_WEBHOOK_BACKOFF_S": str(WEBHOOK_BACKOFF_S),
        "FITROOM_WEBHOOK_BACKOFF_MAX_S": "5",
        "FITROOM_WEBHOOK_MAX_ATTEMPTS": str(WEBHOOK_MAX_ATTEMPTS),
        "FITROOM_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
        "FITROOM_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
        "FITROOM_FETCH_TIMEOUT_S": str(FETCH_TIMEOUT_S),
        "FITROOM_MAX_WAIT_S": "30",
        "FITROOM_DEMO": "1",  # the storefront page, for tests/gateway/test_demo_browser.py
    }


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, repository: Path, image_host: LocalHttp, receiver: Receiver
) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("gateway"), server_env([image_host, receiver]))
    srv.start()
    yield srv
    srv.stop()
    log = srv.log()
    assert "Application shutdown complete" in log and "Traceback" not in log, log


@pytest.fixture(scope="session")
def acme(server: Server) -> Key:
    """Tenant acme's key, created with `fitroom keys create` while the server runs."""
    return server.create_key("acme")


@pytest.fixture(scope="session")
def globex(server: Server) -> Key:
    return server.create_key("globex")


# Upper garments the astronaut (a half-body photo) can wear, each a different image (and so analysed
# on its own): four outlines, their prints shifted by the seed.
UPPER_OUTLINES = (TEE, TANK_TOP, LONG_SLEEVE, CARDIGAN)


def upper_garment_png(n: int) -> bytes:
    return encode(product_image(UPPER_OUTLINES[n % len(UPPER_OUTLINES)], seed=n), "PNG")


def register_garments(server: Server, key: Key, count: int) -> list[str]:
    ids = []
    with server.client(key) as client:
        for n in range(count):
            files = {"image": (f"g{n}.png", upper_garment_png(n), "image/png")}
            response = client.post("/v1/garments", files=files, data={"category": "upper", "sku": f"drawn-{n}"})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
    return ids


@pytest.fixture(scope="session")
def catalogue(server: Server, acme: Key) -> list[str]:
    """Ten registered upper garments of acme's, shared by the person and batch tests."""
    return register_garments(server, acme, 10)
