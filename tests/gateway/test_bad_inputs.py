"""A corpus of bad requests, each answered by the real server with the right 4xx and a stable
code, never a 5xx nor a stack trace; the server is healthy and serving afterwards."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.bad_images import ASTRONAUT, corpus, save
from tests.gateway.conftest import MAX_IMAGE_BYTES, MAX_REQUEST_BYTES
from tests.gateway.helpers import Key, LocalHttp, Server, wait_finished


@dataclass(frozen=True)
class Ctx:
    person: bytes
    tee: bytes
    host: str  # the allow-listed image host
    closed_port: int


def corrupt_jpeg_header() -> bytes:
    jpeg = bytearray(save(Image.fromarray(ASTRONAUT), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")  # baseline start-of-frame: its fields become nonsense
    jpeg[sof + 4 : sof + 12] = b"\x00" * 8
    return bytes(jpeg)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


Build = Callable[[Ctx], dict[str, Any]]


def upload(person: bytes | Callable[[Ctx], bytes], content_type: str = "image/jpeg") -> Build:
    def build(ctx: Ctx) -> dict[str, Any]:
        data = person(ctx) if callable(person) else person
        return {"files": {"person": ("p.jpg", data, content_type), "garment": ("g.png", ctx.tee, "image/png")}}

    return build


def as_json(**fields: Any) -> Build:
    """A JSON body: person and garment default to good data URLs; a callable field gets the ctx."""

    def build(ctx: Ctx) -> dict[str, Any]:
        body = {
            "person": f"data:image/jpeg;base64,{b64(ctx.person)}",
            "garment": f"data:image/png;base64,{b64(ctx.tee)}",
        }
        for name, value in fields.items():
            if value is None:
                body.pop(name, None)
            else:
                body[name] = value(ctx) if callable(value) else value
        return {"json": body}

    return build


def person_url(make: Callable[[Ctx], str]) -> Build:
    return as_json(person=make)


def raw(body: bytes, content_type: str | None) -> Build:
    return lambda ctx: {"content": body, "headers": {"Content-Type": content_type} if content_type else {}}


def _chunks(size: int) -> Iterator[bytes]:
    for _ in range(size // 65536 + 1):
        yield b"\xff" * 65536


# The status each code is answered with (the codes' own, from services/common/errors.py).
STATUS = {
    "image_invalid": 422,
    "image_too_large": 413,
    "unsupported_media_type": 415,
    "json_invalid": 400,
    "request_invalid": 422,
    "category_invalid": 422,
    "garment_not_found": 404,
    "request_too_large": 413,
    "url_forbidden": 422,
    "url_fetch_failed": 422,
}


def with_fields(**data: str) -> Build:
    return lambda ctx: {**upload(ctx.person)(ctx), "data": data}


def with_headers(**headers: str) -> Build:
    return lambda ctx: {**as_json()(ctx), "headers": {k.replace("_", "-"): v for k, v in headers.items()}}


def garment_text(ctx: Ctx) -> dict[str, Any]:
    return {"files": {"person": ("p.jpg", ctx.person, "image/jpeg"), "garment": ("g.png", b"just text", "image/png")}}


def extra_file(ctx: Ctx) -> dict[str, Any]:
    return {"files": {**upload(ctx.person)(ctx)["files"], "extra": ("x.jpg", ctx.person, "image/jpeg")}}


def chunked_over_limit(ctx: Ctx) -> dict[str, Any]:
    return {"content": _chunks(MAX_REQUEST_BYTES + 1), "headers": {"Content-Type": "application/json"}}


def truncated_base64(ctx: Ctx) -> str:
    return f"data:image/jpeg;base64,{b64(ctx.person)[:-3]}"


SVG = corpus()["svg"][0]
NO_GARMENT = "gar_" + "0" * 32

# (case id, request, expected code)
CASES: list[tuple[str, Build, str]] = [
    *((f"upload_{name}", upload(data), code) for name, (data, code) in corpus().items()),
    ("upload_corrupt_jpeg_header", upload(corrupt_jpeg_header()), "image_invalid"),
    ("upload_over_max_image_bytes", upload(b"\xff\xd8\xff" + bytes(MAX_IMAGE_BYTES)), "image_too_large"),
    ("garment_upload_is_text", garment_text, "image_invalid"),
    ("upload_declared_text_html", upload(lambda ctx: ctx.person, "text/html"), "unsupported_media_type"),
    ("body_text_plain", raw(b"person=me", "text/plain"), "unsupported_media_type"),
    ("body_without_content_type", raw(b"\xff\xd8\xff", None), "unsupported_media_type"),
    ("body_form_urlencoded", raw(b"person=x", "application/x-www-form-urlencoded"), "unsupported_media_type"),
    ("json_malformed", raw(b'{"person": "data:', "application/json"), "json_invalid"),
    ("json_not_utf8", raw(b'{"person": "\xff\xfe"}', "application/json"), "json_invalid"),
    ("json_array", raw(b"[1, 2]", "application/json"), "request_invalid"),
    ("json_nested_100000_deep", raw(b"[" * 100_000 + b"]" * 100_000, "application/json"), "json_invalid"),
    ("json_object_nested_deep", raw(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "application/json"), "json_invalid"),
    ("json_unknown_field", as_json(colour="red"), "request_invalid"),
    ("json_person_is_a_number", as_json(person=42), "request_invalid"),
    ("json_category_unknown", as_json(category="shoes"), "category_invalid"),
    ("json_output_format_gif", as_json(output_format="gif"), "request_invalid"),
    ("json_missing_person", as_json(person=None), "request_invalid"),
    ("json_garment_and_garment_id", as_json(garment_id=NO_GARMENT), "request_invalid"),
    ("json_no_garment", as_json(garment=None), "request_invalid"),
    ("json_unknown_garment_id", as_json(garment=None, garment_id=NO_GARMENT), "garment_not_found"),
    ("json_traversal_garment_id", as_json(garment=None, garment_id="../../../etc/passwd"), "garment_not_found"),
    ("json_shopper_id_bad_characters", as_json(shopper_id="a/../b"), "request_invalid"),
    ("base64_malformed", as_json(person="data:image/jpeg;base64,@@not*base64@@"), "image_invalid"),
    ("base64_truncated", as_json(person=truncated_base64), "image_invalid"),
    ("data_url_not_base64", as_json(person="data:image/png,rawbytes"), "image_invalid"),
    ("data_url_of_html", as_json(person=f"data:text/html;base64,{b64(b'<html></html>')}"), "unsupported_media_type"),
    ("data_url_of_svg", as_json(person=f"data:image/svg+xml;base64,{b64(SVG)}"), "unsupported_media_type"),
    ("person_plain_text", as_json(person="a photo of me"), "image_invalid"),
    ("multipart_category_unknown", with_fields(category="hat"), "category_invalid"),
    ("multipart_unknown_field", with_fields(colour="red"), "request_invalid"),
    ("multipart_unexpected_file", extra_file, "request_invalid"),
    ("multipart_no_boundary", raw(b"--x\r\n\r\n", "multipart/form-data"), "request_invalid"),
    ("multipart_garbage", raw(b"\x00\x01garbage", "multipart/form-data; boundary=abc"), "request_invalid"),
    ("body_over_limit_declared", raw(bytes(MAX_REQUEST_BYTES + 1), "application/json"), "request_too_large"),
    ("body_over_limit_chunked", chunked_over_limit, "request_too_large"),
    ("idempotency_key_too_long", with_headers(Idempotency_Key="k" * 300), "request_invalid"),
    # Server-side request forgery: none of these is ever connected to.
    ("url_loopback", person_url(lambda ctx: f"http://127.0.0.1:{ctx.closed_port}/admin"), "url_forbidden"),
    ("url_loopback_https", as_json(person="https://127.0.0.1/photo.jpg"), "url_forbidden"),
    ("url_localhost", as_json(person="https://localhost/photo.jpg"), "url_forbidden"),
    ("url_private_10", as_json(person="https://10.0.0.7/photo.jpg"), "url_forbidden"),
    ("url_private_192_168", as_json(person="https://192.168.1.1/photo.jpg"), "url_forbidden"),
    ("url_cgnat", as_json(person="https://100.64.0.1/photo.jpg"), "url_forbidden"),
    ("url_metadata", as_json(person="https://169.254.169.254/latest/meta-data/"), "url_forbidden"),
    ("url_ipv6_loopback", as_json(person="https://[::1]/photo.jpg"), "url_forbidden"),
    ("url_ipv4_mapped_ipv6", as_json(person="https://[::ffff:127.0.0.1]/photo.jpg"), "url_forbidden"),
    ("url_ipv6_link_local", as_json(person="https://[fe80::1]/photo.jpg"), "url_forbidden"),
    ("url_decimal_loopback", as_json(person="https://2130706433/photo.jpg"), "url_forbidden"),
    ("url_unspecified", as_json(person="https://0.0.0.0/photo.jpg"), "url_forbidden"),
    ("url_http_scheme", as_json(person="http://example.com/photo.jpg"), "url_forbidden"),
    ("url_file_scheme", as_json(person="file:///etc/passwd"), "url_forbidden"),
    ("url_ftp_scheme", as_json(person="ftp://example.com/photo.jpg"), "url_forbidden"),
    ("url_gopher_scheme", as_json(person="gopher://127.0.0.1:6379/_INFO"), "url_forbidden"),
    ("url_credentials", as_json(person="https://user:pass@example.com/photo.jpg"), "url_forbidden"),
    ("url_redirect_to_loopback", person_url(lambda ctx: f"{ctx.host}/to-loopback"), "url_forbidden"),
    ("url_redirect_to_metadata", person_url(lambda ctx: f"{ctx.host}/to-metadata"), "url_forbidden"),
    ("url_redirect_to_file", person_url(lambda ctx: f"{ctx.host}/to-file"), "url_forbidden"),
    ("url_redirect_loop", person_url(lambda ctx: f"{ctx.host}/loop"), "url_fetch_failed"),
    ("url_not_found", person_url(lambda ctx: f"{ctx.host}/missing.jpg"), "url_fetch_failed"),
    ("url_html_page", person_url(lambda ctx: f"{ctx.host}/page.html"), "image_invalid"),
    ("url_slow_drip", person_url(lambda ctx: f"{ctx.host}/slow.jpg"), "url_fetch_failed"),
    ("url_endless_body", person_url(lambda ctx: f"{ctx.host}/endless.png"), "image_too_large"),
    ("callback_url_loopback", as_json(callback_url="https://127.0.0.1/hook"), "url_forbidden"),
    ("callback_url_not_a_url", as_json(callback_url="javascript:alert(1)"), "url_forbidden"),
]

# Other routes: (case id, method, path, params, expected status, expected code)
PATH_CASES: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("job_id_traversal", "GET", "/v1/tryon/..%2F..%2Fetc%2Fpasswd", {}, 404, "not_found"),
    ("job_id_dotdot", "GET", "/v1/tryon/job_..", {}, 404, "job_not_found"),
    ("job_id_sql", "GET", "/v1/tryon/job_' OR '1'='1", {}, 404, "job_not_found"),
    ("job_id_nul", "GET", "/v1/tryon/job_%00", {}, 404, "job_not_found"),
    ("job_id_long", "GET", "/v1/tryon/" + "a" * 5000, {}, 404, "job_not_found"),
    ("job_id_unknown_result", "GET", "/v1/tryon/job_" + "f" * 32 + "/result", {}, 404, "job_not_found"),
    ("job_delete_traversal", "DELETE", "/v1/tryon/job_%2e%2e", {}, 404, "job_not_found"),
    ("garment_id_traversal", "GET", "/v1/garments/..%5c..%5cwin.ini", {}, 404, "garment_not_found"),
    ("shopper_id_traversal", "DELETE", "/v1/shoppers/..%2F..%2Fetc", {}, 404, "not_found"),
    ("shopper_id_nul", "DELETE", "/v1/shoppers/%00", {}, 404, "not_found"),
    ("wait_negative", "GET", "/v1/tryon/job_" + "0" * 32, {"wait": "-1"}, 422, "request_invalid"),
    ("wait_not_a_number", "GET", "/v1/tryon/job_" + "0" * 32, {"wait": "soon"}, 422, "request_invalid"),
    ("garments_limit_zero", "GET", "/v1/garments", {"limit": "0"}, 422, "request_invalid"),
    ("method_not_allowed", "PUT", "/v1/tryon", {}, 405, "method_not_allowed"),
]


@pytest.fixture(scope="module")
def ctx(person_jpeg: bytes, tee_png: bytes, image_host: LocalHttp, closed_port: int) -> Ctx:
    return Ctx(person_jpeg, tee_png, image_host.url, closed_port)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert "Traceback" not in response.text and 'File "' not in response.text


@pytest.mark.parametrize(("build", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_tryon_request(server: Server, acme: Key, ctx: Ctx, build: Build, code: str) -> None:
    with server.client(acme) as client:
        assert_error(client.post("/v1/tryon", **build(ctx)), STATUS[code], code)


@pytest.mark.parametrize(
    ("method", "path", "params", "status", "code"), [c[1:] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES]
)
def test_bad_path_or_query(
    server: Server, acme: Key, method: str, path: str, params: dict[str, Any], status: int, code: str
) -> None:
    with server.client(acme) as client:
        assert_error(client.request(method, path, params=params), status, code)


def test_bad_garment_registrations(server: Server, acme: Key) -> None:
    with server.client(acme) as client:
        for name, (data, code) in corpus().items():
            response = client.post("/v1/garments", files={"image": (name, data, "image/png")})
            assert response.json()["error"]["code"] == code, name
        assert_error(client.post("/v1/garments", json={}), 422, "request_invalid")
        assert_error(client.post("/v1/garments", json={"image": "https://10.1.1.1/x.png"}), 422, "url_forbidden")


def test_server_is_healthy_after_the_corpus(server: Server, acme: Key, person_jpeg: bytes, tee_png: bytes) -> None:
    """Runs after the corpus (file order): still ready, still serving try-ons, and never a 5xx."""
    with server.client(acme) as client:
        assert client.get("/readyz").status_code == 200
        files = {"person": ("p.jpg", person_jpeg, "image/jpeg"), "garment": ("g.png", tee_png, "image/png")}
        job = client.post("/v1/tryon", files=files).json()
        assert wait_finished(client, job["id"])["status"] == "succeeded"
        metrics = client.get("/metrics").text
    server_errors = re.findall(r'^fitroom_http_requests_total\{.*status="5\d\d"\}.*$', metrics, re.MULTILINE)
    # /readyz answers 503 while the models load at start: that is what it is for.
    assert [line for line in server_errors if 'route="/readyz"' not in line] == []
    assert "Traceback" not in server.log()


def test_corpus_is_big_enough() -> None:
    assert len(CASES) + len(PATH_CASES) >= 30
