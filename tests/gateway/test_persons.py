"""Shoppers' photos as a resource (/v1/persons), against the real server: registered once, their pose
and parse computed by the first try-on and reused by the rest, kept apart per tenant, and erased with
the person or the shopper."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from services.common.imageio import decode_image
from services.pipeline import PERSON_VERSION, person_prefix
from tests.gateway.helpers import Key, Server, encode, wait_finished


def tenant_dir(server: Server, key: Key) -> Path:
    return server.data_dir / "artifacts" / "tenants" / key.tenant


def fresh_photo(crop: int) -> bytes:
    """The astronaut, cropped by `crop` pixels: a photo no other test sends, so its cache starts empty."""
    return encode(np.ascontiguousarray(data.astronaut()[crop:, crop:]), "JPEG")


def register(server: Server, key: Key, photo: bytes, shopper_id: str | None = None) -> dict:
    with server.client(key) as client:
        extra = {"shopper_id": shopper_id} if shopper_id else {}
        response = client.post("/v1/persons", files={"person": ("me.jpg", photo, "image/jpeg")}, data=extra)
    assert response.status_code == 201, response.text
    return response.json()


def test_a_person_registered_once_runs_pose_and_parse_once_for_five_garments(
    server: Server, acme: Key, catalogue: list[str]
) -> None:
    photo = fresh_photo(6)
    person = register(server, acme, photo)
    assert person["id"].startswith("per_") and (person["width"], person["height"]) == (506, 506)
    cached = tenant_dir(server, acme) / person_prefix(decode_image(photo))
    assert not cached.exists()  # nothing computed at registration: the first try-on does it
    with server.client(acme) as client:
        assert client.get(f"/v1/persons/{person['id']}").json() == person
        job_ids = []
        for n, garment_id in enumerate(catalogue[:5]):
            body = {"person_id": person["id"], "garment_id": garment_id, "intermediates": n == 0}
            response = client.post("/v1/tryon", json=body)
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])
        jobs = [wait_finished(client, job_id) for job_id in job_ids]
        assert [job["status"] for job in jobs] == ["succeeded"] * 5, [job["error"] for job in jobs]
        assert all(job["person_id"] == person["id"] for job in jobs)
        for stage in ("pose", "parser"):
            statuses = [job["stages"][stage]["status"] for job in jobs]
            assert statuses == ["done"] + ["cached"] * 4, (stage, statuses)
        assert (cached / f"v{PERSON_VERSION}" / "pose.json").is_file() and (
            cached / f"v{PERSON_VERSION}" / "labels.npy"
        ).is_file()

        # The intermediates the first job asked to keep, through the public API only.
        first, second = jobs[0]["id"], jobs[1]["id"]
        for name, media_type in (("pose", "image/jpeg"), ("parse", "image/png"), ("warped", "image/png")):
            response = client.get(f"/v1/tryon/{first}/intermediates/{name}")
            assert response.status_code == 200 and response.headers["content-type"] == media_type, name
            image = Image.open(io.BytesIO(response.content))
            assert image.size == (506, 506) and (name != "warped" or image.mode == "RGBA"), (name, image.mode)
        missing = client.get(f"/v1/tryon/{second}/intermediates/pose")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "intermediate_not_found"
        unknown = client.get(f"/v1/tryon/{first}/intermediates/secrets")
        assert unknown.status_code == 422

        # Erasing a job leaves the person's cache (it belongs to the person); erasing the person takes it.
        assert client.delete(f"/v1/tryon/{first}").status_code == 204
        assert (cached / f"v{PERSON_VERSION}" / "pose.json").is_file()
        assert client.delete(f"/v1/persons/{person['id']}").status_code == 204
        gone = client.get(f"/v1/persons/{person['id']}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "person_not_found"
        after = client.post("/v1/tryon", json={"person_id": person["id"], "garment_id": catalogue[0]})
        assert after.status_code == 404 and after.json()["error"]["code"] == "person_not_found"
        for job_id in job_ids[1:]:
            client.delete(f"/v1/tryon/{job_id}")
    assert not cached.exists()
    assert not (tenant_dir(server, acme) / "persons" / person["id"]).exists()


def test_persons_and_batches_of_another_tenant_are_not_found(
    server: Server, acme: Key, globex: Key, person_jpeg: bytes, tee_png: bytes, catalogue: list[str]
) -> None:
    person = register(server, acme, person_jpeg)
    with server.client(acme) as client:
        batch = client.post("/v1/tryon/batch", json={"person_id": person["id"], "garment_ids": catalogue[:1]})
        assert batch.status_code == 202, batch.text
        batch_id = batch.json()["id"]
    with server.client(globex) as other:
        for method, path, code in [
            ("GET", f"/v1/persons/{person['id']}", "person_not_found"),
            ("DELETE", f"/v1/persons/{person['id']}", "person_not_found"),
            ("GET", f"/v1/tryon/batch/{batch_id}", "batch_not_found"),
            ("DELETE", f"/v1/tryon/batch/{batch_id}", "batch_not_found"),
        ]:
            response = other.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["code"] == code
        tee = "data:image/png;base64," + base64.b64encode(tee_png).decode()
        borrowed = other.post("/v1/tryon/batch", json={"person_id": person["id"], "garments": [tee]})
        assert borrowed.status_code == 404 and borrowed.json()["error"]["code"] == "person_not_found"
        borrowed = other.post("/v1/tryon", json={"person_id": person["id"], "garment": tee})
        assert borrowed.status_code == 404 and borrowed.json()["error"]["code"] == "person_not_found"
        acme_garments = other.post("/v1/tryon/batch", json={"person": tee, "garment_ids": catalogue[:1]})
        assert acme_garments.status_code == 404 and acme_garments.json()["error"]["code"] == "garment_not_found"
    with server.client(acme) as client:
        done = client.get(f"/v1/tryon/batch/{batch_id}", params={"wait": 30}).json()
        assert done["status"] == "finished" and done["counts"]["succeeded"] == 1, done
        assert client.delete(f"/v1/tryon/batch/{batch_id}").status_code == 204
        assert client.delete(f"/v1/persons/{person['id']}").status_code == 204


def test_erasing_a_shopper_takes_their_persons_batches_and_files(
    server: Server, acme: Key, catalogue: list[str]
) -> None:
    photo, own_photo = fresh_photo(10), fresh_photo(14)
    person = register(server, acme, photo, shopper_id="shop-7")
    root = tenant_dir(server, acme)
    with server.client(acme) as client:
        # Tagged through the person (no shopper_id of its own), and a batch with a photo of its own.
        first = client.post("/v1/tryon/batch", json={"person_id": person["id"], "garment_ids": catalogue[:2]})
        second = client.post(
            "/v1/tryon/batch",
            files={"person": ("p.jpg", own_photo, "image/jpeg")},
            data={"garment_ids": catalogue[2:3], "shopper_id": "shop-7"},
        )
        assert first.status_code == second.status_code == 202, (first.text, second.text)
        assert first.json()["shopper_id"] == "shop-7"
        batches = [first.json(), second.json()]
        for batch in batches:
            done = client.get(f"/v1/tryon/batch/{batch['id']}", params={"wait": 30}).json()
            assert done["status"] == "finished" and done["counts"]["succeeded"] == len(batch["jobs"]), done
        job_ids = [job["id"] for batch in batches for job in batch["jobs"]]
        assert all((root / "jobs" / job_id / "result.jpg").is_file() for job_id in job_ids)
        caches = [root / person_prefix(decode_image(p)) for p in (photo, own_photo)]
        assert all(cache.is_dir() for cache in caches)
        assert not (root / "batches" / second.json()["id"]).exists()  # its photo went when it ended

        erased = client.delete("/v1/shoppers/shop-7")
        assert erased.status_code == 200, erased.text
        counts = erased.json()
        assert (counts["persons_deleted"], counts["batches_deleted"], counts["jobs_deleted"]) == (1, 2, 3)
        assert counts["artifacts_deleted"] >= 3 + 1 + 2 * 4  # results, the photo, two caches
        assert client.get(f"/v1/persons/{person['id']}").status_code == 404
        for batch in batches:
            assert client.get(f"/v1/tryon/batch/{batch['id']}").status_code == 404
        for job_id in job_ids:
            assert client.get(f"/v1/tryon/{job_id}").status_code == 404
    assert not (root / "persons" / person["id"]).exists()
    assert not any((root / "jobs" / job_id).exists() for job_id in job_ids)
    assert not any(cache.exists() for cache in caches)
    assert not any((root / "batches" / batch["id"]).exists() for batch in batches)
