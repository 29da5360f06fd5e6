"""Batches (/v1/tryon/batch) against the real server: ten garments on one shopper end with ten results
and one signed webhook, the person's stages run once, an Idempotency-Key replays, bad input gets its
code and leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from skimage import data

from services.common.imageio import decode_image
from tests.gateway.conftest import UPPER_OUTLINES, Receiver, upper_garment_png
from tests.gateway.helpers import Key, Server, encode, wait_until
from tests.gateway.test_webhooks import documented_verify, receiver_verifies

MULTIPART = "multipart/form-data"


def batch_events(receiver: Receiver, batch_id: str) -> list:
    return [r for r in receiver.requests_to("/ok") if json.loads(r.body)["data"]["id"] == batch_id]


def tenant_dir(server: Server, key: Key) -> Path:
    return server.data_dir / "artifacts" / "tenants" / key.tenant


def test_a_batch_of_ten_ends_with_ten_results_and_one_signed_webhook(
    server: Server, acme: Key, receiver: Receiver, catalogue: list[str]
) -> None:
    # A photo of its own (multipart), eight registered garments and two product images sent with it.
    photo = encode(np.ascontiguousarray(data.astronaut()[20:, 4:]), "JPEG")
    parts = [("person", ("me.jpg", photo, "image/jpeg"))]
    parts += [("garments", (f"g{n}.png", upper_garment_png(20 + n), "image/png")) for n in range(2)]
    fields = {"garment_ids": catalogue[:8], "callback_url": f"{receiver.url}/ok", "category": "upper"}
    headers = {"Idempotency-Key": "batch-of-ten"}
    with server.client(acme) as client:
        response = client.post("/v1/tryon/batch", files=parts, data=fields, headers=headers)
        assert response.status_code == 202, response.text
        batch = response.json()
        assert batch["id"].startswith("bat_") and response.headers["location"] == batch["status_url"]
        assert batch["total"] == 10 and [job["garment_id"] for job in batch["jobs"]] == [*catalogue[:8], None, None]

        replay = client.post("/v1/tryon/batch", files=parts, data=fields, headers=headers)
        assert replay.status_code == 202 and replay.json()["id"] == batch["id"]
        assert replay.headers["idempotent-replayed"] == "true"
        other = client.post("/v1/tryon/batch", files=parts, data={**fields, "output_format": "png"}, headers=headers)
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"

        done = client.get(f"/v1/tryon/batch/{batch['id']}", params={"wait": 30}).json()
        while done["status"] != "finished":
            done = client.get(f"/v1/tryon/batch/{batch['id']}", params={"wait": 30}).json()
        assert done["counts"] == {"queued": 0, "running": 0, "succeeded": 10, "failed": 0}, done
        images = []
        for job in done["jobs"]:
            result = client.get(job["result_url"])
            assert result.status_code == 200 and result.headers["content-type"] == "image/jpeg"
            images.append(decode_image(result.content))
        assert all(image.shape == (492, 508, 3) for image in images)
        # Different garments, different pictures (drawn ones of one outline may come out alike).
        assert len({image.tobytes() for image in images}) >= len(UPPER_OUTLINES)

        # The person's stages ran once for the whole batch.
        jobs = [client.get(job["status_url"]).json() for job in done["jobs"]]
        for stage in ("pose", "parser"):
            assert sorted(job["stages"][stage]["status"] for job in jobs) == ["cached"] * 9 + ["done"], stage
        assert all(job["batch_id"] == batch["id"] for job in jobs)

        assert wait_until(lambda: batch_events(receiver, batch["id"]), 10)
        assert wait_until(lambda: client.get(batch["status_url"]).json()["webhook"]["status"] == "delivered", 10)
    (event,) = batch_events(receiver, batch["id"])  # one webhook for the whole batch
    assert receiver_verifies(acme.webhook_secret, event)
    assert documented_verify()(acme.webhook_secret, event.headers["fitroom-signature"], event.body)
    assert not receiver_verifies(acme.webhook_secret + "x", event)
    body = json.loads(event.body)
    assert body["type"] == "batch.finished" and body["id"] == event.headers["fitroom-event-id"]
    assert body["data"]["counts"]["succeeded"] == 10 and len(body["data"]["jobs"]) == 10
    assert not (tenant_dir(server, acme) / "batches" / batch["id"]).exists()  # its photo went when it ended


def test_bad_batches_get_their_codes_and_leave_nothing(
    server: Server, acme: Key, person_jpeg: bytes, catalogue: list[str]
) -> None:
    person = {"person": ("me.jpg", person_jpeg, "image/jpeg")}
    unknown = "gar_" + "0" * 32
    batches_dir = tenant_dir(server, acme) / "batches"
    before = sorted(batches_dir.iterdir()) if batches_dir.exists() else []
    with server.client(acme) as client:
        cases = [
            ({"garment_ids": [catalogue[0], unknown]}, 404, "garment_not_found", "garment_ids[1]"),
            ({"garment_ids": [catalogue[0], "not-an-id"]}, 404, "garment_not_found", "garment_ids[1]"),
            ({"garment_ids": catalogue[:1] * 101}, 422, "batch_too_large", "at most 100"),
            ({}, 422, "batch_empty", "at least one garment"),
            ({"garment_ids": catalogue[:1], "category": "lower"}, 422, "category_invalid", "garment_ids[0]"),
            ({"garment_ids": catalogue[:1], "person_id": "per_" + "0" * 32}, 422, "request_invalid", "exactly one"),
        ]
        for fields, status, code, said in cases:
            response = client.post("/v1/tryon/batch", files=person, data=fields)
            assert response.status_code == status, (fields, response.text)
            assert response.json()["error"]["code"] == code and said in response.json()["error"]["message"], code
        in_json = client.post("/v1/tryon/batch", json={"person_id": "per_" + "0" * 32, "garment_ids": []})
        assert in_json.status_code == 422 and in_json.json()["error"]["code"] == "batch_empty"
        missing_person = client.post(
            "/v1/tryon/batch", json={"person_id": "per_" + "0" * 32, "garment_ids": catalogue[:1]}
        )
        assert missing_person.status_code == 404 and missing_person.json()["error"]["code"] == "person_not_found"
        not_found = client.get("/v1/tryon/batch/bat_" + "0" * 32)
        assert not_found.status_code == 404 and not_found.json()["error"]["code"] == "batch_not_found"
    assert (sorted(batches_dir.iterdir()) if batches_dir.exists() else []) == before
