"""The API as a retailer uses it, against a real `fitroom serve` process over real HTTP."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from services.common.imageio import decode_image
from services.pipeline import person_prefix
from tests.gateway.helpers import Key, LocalHttp, Server, encode, fitroom, wait_finished, wait_until
from tests.warp.drawn import SHEATH_DRESS, product_image


def files(person: bytes, garment: bytes | None = None) -> dict[str, tuple[str, bytes, str]]:
    parts = {"person": ("person.jpg", person, "image/jpeg")}
    if garment is not None:
        parts["garment"] = ("garment.png", garment, "image/png")
    return parts


def data_url(image: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(image).decode()}"


def tenant_dir(server: Server, key: Key) -> Path:
    return server.data_dir / "artifacts" / "tenants" / key.tenant


def test_multipart_tryon_submit_poll_and_fetch_the_result(
    server: Server, acme: Key, person_jpeg: bytes, tee_png: bytes
) -> None:
    with server.client(acme) as client:
        response = client.post("/v1/tryon", files=files(person_jpeg, tee_png))
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["status"] in ("queued", "running")
        assert job["id"].startswith("job_") and len(job["id"]) == 36
        assert response.headers["location"] == job["status_url"] == f"{server.url}/v1/tryon/{job['id']}"
        assert job["result_url"] is None and job["error"] is None

        done = wait_finished(client, job["id"])
        assert done["status"] == "succeeded", done
        assert done["detected_category"] == "upper"
        assert set(done["stages"]) == {"pose", "parser", "garment", "warp", "fusion"}
        for name, stage in done["stages"].items():
            assert stage["status"] in ("done", "cached"), (name, stage)
            assert stage["seconds"] is not None and stage["seconds"] >= 0
        assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
        assert done["result_url"] == f"{done['status_url']}/result"

        result = client.get(done["result_url"])
    assert result.status_code == 200
    assert result.headers["content-type"] == "image/jpeg"
    assert result.headers["cache-control"] == "private, no-store"
    image = np.asarray(Image.open(io.BytesIO(result.content)).convert("RGB")).astype(int)
    person = data.astronaut().astype(int)
    assert image.shape == person.shape
    # The drawn tee is navy: the torso (below the neck, between the shoulders) turned dark blue,
    # while the face above it stayed the photo's.
    torso, face = (slice(330, 450), slice(180, 330)), (slice(60, 160), slice(180, 260))
    assert np.abs(image[torso] - person[torso]).mean() > 30
    assert image[torso][..., 2].mean() > image[torso][..., 0].mean() + 20  # more blue than red
    assert np.abs(image[face] - person[face]).mean() < 12


def test_json_tryon_with_data_urls_and_png_output(
    server: Server, acme: Key, person_jpeg: bytes, tee_png: bytes
) -> None:
    body = {
        "person": data_url(person_jpeg, "image/jpeg"),
        "garment": data_url(tee_png, "image/png"),
        "category": "upper",
        "output_format": "png",
    }
    with server.client(acme) as client:
        response = client.post("/v1/tryon", json=body)
        assert response.status_code == 202, response.text
        done = wait_finished(client, response.json()["id"])
        assert done["status"] == "succeeded" and done["category"] == "upper" and done["output_format"] == "png"
        result = client.get(f"/v1/tryon/{done['id']}/result")
    assert result.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(result.content)).size == (512, 512)


def test_image_urls_are_fetched(server: Server, acme: Key, image_host: LocalHttp) -> None:
    """https in production; the test host is plain http, allowed by FITROOM_URL_ALLOW_HOSTS only."""
    body = {"person": f"{image_host.url}/to-astronaut", "garment": f"{image_host.url}/tee.png"}
    with server.client(acme) as client:
        response = client.post("/v1/tryon", json=body)
        assert response.status_code == 202, response.text
        assert wait_finished(client, response.json()["id"])["status"] == "succeeded"
    assert image_host.requests_to("/astronaut.jpg"), "the redirect was followed"


def test_long_poll_returns_when_the_job_finishes(server: Server, acme: Key, person_jpeg: bytes, tee_png: bytes) -> None:
    with server.client(acme) as client:
        job_id = client.post("/v1/tryon", files=files(person_jpeg, tee_png)).json()["id"]
        early = client.get(f"/v1/tryon/{job_id}/result")  # no wait: not there yet
        assert early.status_code == 409 and early.json()["error"]["code"] == "result_not_ready"
        result = client.get(f"/v1/tryon/{job_id}/result", params={"wait": 25})  # one request, held until done
        assert result.status_code == 200 and result.headers["content-type"] == "image/jpeg"
        assert client.get(f"/v1/tryon/{job_id}", params={"wait": 25}).json()["status"] == "succeeded"


def test_a_photo_without_a_person_fails_the_job_with_its_code(
    server: Server, acme: Key, cat_jpeg: bytes, tee_png: bytes
) -> None:
    with server.client(acme) as client:
        job_id = client.post("/v1/tryon", files=files(cat_jpeg, tee_png)).json()["id"]
        done = wait_finished(client, job_id)
        assert done["status"] == "failed"
        assert done["error"]["code"] == "no_person_detected" and done["error"]["message"]
        assert done["stages"]["pose"]["status"] == "failed"
        assert done["result_url"] is None
        result = client.get(f"/v1/tryon/{job_id}/result")
    assert result.status_code == 422
    assert result.json()["error"]["code"] == "no_person_detected"


def test_a_registered_garment_is_analysed_once_and_reused(
    server: Server, acme: Key, person_jpeg: bytes, tee_png: bytes
) -> None:
    with server.client(acme) as client:
        created = client.post("/v1/garments", files={"image": ("tee.png", tee_png, "image/png")}, data={"sku": "T-1"})
        assert created.status_code == 201, created.text
        garment = created.json()
        assert garment["id"].startswith("gar_") and garment["category"] == "upper"
        assert (garment["width"], garment["height"], garment["sku"]) == (600, 600, "T-1")
        assert client.get(f"/v1/garments/{garment['id']}").json() == garment

        for _ in range(2):
            response = client.post("/v1/tryon", files=files(person_jpeg), data={"garment_id": garment["id"]})
            assert response.status_code == 202, response.text
            done = wait_finished(client, response.json()["id"])
            assert done["status"] == "succeeded" and done["garment_id"] == garment["id"]
            assert done["stages"]["garment"]["status"] == "cached"  # analysed at registration, not again

        conflicting = client.post(
            "/v1/tryon", files=files(person_jpeg), data={"garment_id": garment["id"], "category": "dress"}
        )
        assert conflicting.status_code == 422 and conflicting.json()["error"]["code"] == "category_invalid"

        assert client.delete(f"/v1/garments/{garment['id']}").status_code == 204
        gone = client.get(f"/v1/garments/{garment['id']}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "garment_not_found"
        after = client.post("/v1/tryon", files=files(person_jpeg), data={"garment_id": garment["id"]})
        assert after.status_code == 404 and after.json()["error"]["code"] == "garment_not_found"
    assert not (tenant_dir(server, acme) / "garments" / garment["id"]).exists()


def test_garment_registration_refuses_what_is_not_a_garment(server: Server, acme: Key) -> None:
    blank = encode(np.full((400, 400, 3), 240, np.uint8), "PNG")
    with server.client(acme) as client:
        response = client.post("/v1/garments", json={"image": data_url(blank, "image/png")})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "garment_not_detected"


def test_an_ambiguous_garment_under_auto_asks_for_its_category(server: Server, acme: Key) -> None:
    """A garment whose category detection is unsure is refused under `auto` (never run as the
    wrong category) and registered when the category is sent, with the confidence reported."""
    short_dress = encode(product_image(SHEATH_DRESS), "PNG")
    with server.client(acme) as client:
        refused = client.post("/v1/garments", files={"image": ("dress.png", short_dress, "image/png")})
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "category_uncertain"
        assert "send its category" in refused.json()["error"]["message"]
        given = client.post(
            "/v1/garments", files={"image": ("dress.png", short_dress, "image/png")}, data={"category": "dress"}
        )
        assert given.status_code == 201, given.text
        assert (given.json()["category"], given.json()["category_confidence"]) == ("dress", 1.0)


def test_garments_are_listed_page_by_page(server: Server, globex: Key, tee_png: bytes) -> None:
    with server.client(globex) as client:
        ids = []
        for sku in ("a", "b", "c"):
            response = client.post("/v1/garments", json={"image": data_url(tee_png, "image/png"), "sku": sku})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        seen, after = [], None
        while True:
            page = client.get("/v1/garments", params={"limit": 2, **({"after": after} if after else {})}).json()
            seen += [g["id"] for g in page["data"]]
            if not page["has_more"]:
                break
            after = page["next_after"]
        for garment_id in ids:
            client.delete(f"/v1/garments/{garment_id}")
    assert [g for g in seen if g in ids] == ids  # oldest first, each once


def test_idempotency_key_replays_the_same_job_and_refuses_another_body(
    server: Server, acme: Key, globex: Key, person_jpeg: bytes, tee_png: bytes, cat_jpeg: bytes
) -> None:
    headers = {"Idempotency-Key": "order-1234-try-1"}
    with server.client(acme) as client:
        first = client.post("/v1/tryon", files=files(person_jpeg, tee_png), headers=headers)
        again = client.post("/v1/tryon", files=files(person_jpeg, tee_png), headers=headers)
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers

        other = client.post("/v1/tryon", files=files(cat_jpeg, tee_png), headers=headers)
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
        other_fields = client.post(
            "/v1/tryon", files=files(person_jpeg, tee_png), data={"output_format": "png"}, headers=headers
        )
        assert other_fields.status_code == 409

        # Racing retries (a client that timed out and retried at once) still make one job.
        race = {"Idempotency-Key": "order-1234-try-2"}
        with ThreadPoolExecutor(4) as pool:
            responses = list(
                pool.map(lambda _: client.post("/v1/tryon", files=files(person_jpeg, tee_png), headers=race), range(4))
            )
        assert {r.status_code for r in responses} == {202}
        assert len({r.json()["id"] for r in responses}) == 1
        wait_finished(client, responses[0].json()["id"])
        wait_finished(client, first.json()["id"])
    with server.client(globex) as client:  # keys are per tenant
        theirs = client.post("/v1/tryon", files=files(person_jpeg, tee_png), headers=headers)
        assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
        wait_finished(client, theirs.json()["id"])


def test_a_tenant_never_sees_another_tenants_jobs_garments_or_results(
    server: Server, acme: Key, globex: Key, person_jpeg: bytes, tee_png: bytes
) -> None:
    with server.client(acme) as client:
        job_id = client.post("/v1/tryon", files=files(person_jpeg, tee_png), data={"shopper_id": "s-1"}).json()["id"]
        assert wait_finished(client, job_id)["status"] == "succeeded"
        garment_id = client.post("/v1/garments", files={"image": ("t.png", tee_png, "image/png")}).json()["id"]
    with server.client(globex) as other:
        for method, path in [
            ("GET", f"/v1/tryon/{job_id}"),
            ("GET", f"/v1/tryon/{job_id}/result"),
            ("DELETE", f"/v1/tryon/{job_id}"),
            ("GET", f"/v1/garments/{garment_id}"),
            ("DELETE", f"/v1/garments/{garment_id}"),
        ]:
            response = other.request(method, path)
            assert response.status_code == 404, (method, path, response.text)  # not 403: nothing to learn
            assert response.json()["error"]["code"] in ("job_not_found", "garment_not_found")
        assert garment_id not in [g["id"] for g in other.get("/v1/garments", params={"limit": 100}).json()["data"]]
        borrowed = other.post("/v1/tryon", files=files(person_jpeg), data={"garment_id": garment_id})
        assert borrowed.status_code == 404 and borrowed.json()["error"]["code"] == "garment_not_found"
        assert other.delete("/v1/shoppers/s-1").json() == {
            "jobs_deleted": 0,
            "artifacts_deleted": 0,
            "persons_deleted": 0,
            "batches_deleted": 0,
        }
    with server.client(acme) as client:  # all still there for their owner
        assert client.get(f"/v1/tryon/{job_id}/result").status_code == 200
        assert client.get(f"/v1/garments/{garment_id}").status_code == 200
        client.delete(f"/v1/garments/{garment_id}")
        client.delete(f"/v1/tryon/{job_id}")


def test_api_keys_are_required_and_revocable(server: Server, person_jpeg: bytes) -> None:
    with server.client() as anonymous:
        response = anonymous.get("/v1/garments")
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
        for auth in ("Bearer fr_not_a_key", "Basic dXNlcjpwYXNz", "Bearer", "fr_abc"):
            assert anonymous.get("/v1/garments", headers={"Authorization": auth}).status_code == 401
        # An upload without a key is refused before its body is read.
        assert anonymous.post("/v1/tryon", files=files(person_jpeg)).status_code == 401

    key = server.create_key("initech")
    with server.client(key) as client:
        assert client.get("/v1/garments").status_code == 200
        listed = fitroom("keys", "list", "--tenant", "initech", env=server.env)
        assert key.key_id in listed.stdout and key.api_key not in listed.stdout
        assert fitroom("keys", "revoke", key.key_id, env=server.env).returncode == 0
        # Refused within FITROOM_AUTH_CACHE_S (5 s): the server remembers a key it checked that long.
        assert wait_until(lambda: client.get("/v1/garments").status_code == 401, 5 + 2, interval=0.25)
    stored = (server.data_dir / "gateway.sqlite3").read_bytes()
    assert key.api_key.encode() not in stored  # only its hash


def test_deleting_a_job_erases_its_photos_result_and_cached_person_data(
    server: Server, acme: Key, tee_png: bytes
) -> None:
    # A photo no other test uses, so its cached pose and parse belong to this job alone.
    person = encode(np.ascontiguousarray(data.astronaut()[:, ::-1]), "JPEG")
    with server.client(acme) as client:
        job_id = client.post("/v1/tryon", files=files(person, tee_png)).json()["id"]
        assert wait_finished(client, job_id)["status"] == "succeeded"
        root = tenant_dir(server, acme)
        assert (root / "jobs" / job_id / "result.jpg").is_file()
        assert not (root / "jobs" / job_id / "input").exists()  # inputs go as soon as the job is done
        # Where the pipeline cached this photo's pose and parse (keyed by its decoded pixels).
        cached = root / person_prefix(decode_image(person))
        assert any(path.is_file() for path in cached.rglob("*"))

        assert client.delete(f"/v1/tryon/{job_id}").status_code == 204
        for path in (f"/v1/tryon/{job_id}", f"/v1/tryon/{job_id}/result"):
            response = client.get(path)
            assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"
        assert client.delete(f"/v1/tryon/{job_id}").status_code == 404
    assert not (root / "jobs" / job_id).exists()
    assert not cached.exists()


def test_erasing_a_shopper_erases_all_their_jobs(server: Server, acme: Key, person_jpeg: bytes, tee_png: bytes) -> None:
    with server.client(acme) as client:
        mine = [
            client.post("/v1/tryon", files=files(person_jpeg, tee_png), data={"shopper_id": "cust-42"}).json()["id"]
            for _ in range(2)
        ]
        other = client.post("/v1/tryon", files=files(person_jpeg, tee_png), data={"shopper_id": "cust-43"}).json()["id"]
        for job_id in [*mine, other]:
            wait_finished(client, job_id)
        erased = client.delete("/v1/shoppers/cust-42")
        assert erased.status_code == 200, erased.text
        assert erased.json()["jobs_deleted"] == 2 and erased.json()["artifacts_deleted"] >= 2
        assert all(client.get(f"/v1/tryon/{job_id}").status_code == 404 for job_id in mine)
        assert client.get(f"/v1/tryon/{other}/result").status_code == 200
        assert client.delete("/v1/shoppers/cust-42").json()["jobs_deleted"] == 0


def test_health_readiness_and_metrics(server: Server, acme: Key) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
        ready = client.get("/readyz").json()
        assert ready["status"] == "ok"
        assert ready["checks"] == {k: "ok" for k in ("models", "database", "storage", "queue", "webhooks")}
        text = client.get("/metrics").text
    assert 'fitroom_http_requests_total{method="POST",route="/v1/tryon",status="202"}' in text
    assert 'fitroom_http_request_duration_seconds_bucket{le="0.1",method="GET",route="/healthz",status="200"}' in text
    assert 'fitroom_jobs{status="succeeded"}' in text
    assert 'fitroom_stage_duration_seconds_count{stage="pose"}' in text
    assert "fitroom_queue_depth " in text
    assert "/v1/tryon/job_" not in text  # routes by template, never by id


def test_openapi_and_docs(server: Server) -> None:
    with server.client() as client:
        schema = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    assert {"/v1/tryon", "/v1/tryon/{job_id}", "/v1/tryon/{job_id}/result", "/v1/garments"} <= set(schema["paths"])
    body = schema["paths"]["/v1/tryon"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert body["application/json"]["schema"]["additionalProperties"] is False
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


@pytest.mark.parametrize("path", ["/nope", "/v1/tryon/job_x/y/z"])
def test_unknown_routes_are_json_404(server: Server, path: str) -> None:
    with server.client() as client:
        response = client.get(path)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
