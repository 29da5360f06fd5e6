"""POST /v1/garments with photo_type model against the real server: the garment a person wears is
extracted (try-off), registered, served as a flat-lay and tried on; and its refusals' codes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from skimage import color

from tests.gateway.helpers import Key, Server, encode
from tests.warp.drawn import TEE, drawn_mask, product_image


def mean_lab(pixels: np.ndarray) -> np.ndarray:
    return color.rgb2lab(pixels.reshape(1, -1, 3).astype(np.float64) / 255.0).reshape(-1, 3).mean(axis=0)


def tryon_result(server: Server, key: Key, person: bytes, **garment: object) -> bytes:
    with server.client(key) as client:
        files = {"person": ("p.jpg", person, "image/jpeg")}
        if "png" in garment:
            files["garment"] = ("g.png", garment.pop("png"), "image/png")  # type: ignore[assignment]
        job = client.post("/v1/tryon", files=files, data=garment)
        assert job.status_code == 202, job.text
        done = client.get(f"/v1/tryon/{job.json()['id']}", params={"wait": 60}).json()
        assert done["status"] == "succeeded", done
        return client.get(f"/v1/tryon/{done['id']}/result").content


def test_a_garment_registered_from_a_model_photo_is_extracted_served_and_worn(
    server: Server, acme: Key, person_jpeg: bytes, tee_png: bytes
) -> None:
    # The model photo: the astronaut wearing the drawn striped tee, made by this server.
    model_photo = tryon_result(server, acme, person_jpeg, png=tee_png)
    with server.client(acme) as client:
        created = client.post(
            "/v1/garments",
            files={"image": ("model.jpg", model_photo, "image/jpeg")},
            data={"photo_type": "model", "category": "upper", "sku": "TEE-FROM-MODEL"},
        )
        assert created.status_code == 201, created.text
        garment = created.json()
        assert garment["category"] == "upper" and (garment["width"], garment["height"]) == (512, 512)
        served = client.get(f"/v1/garments/{garment['id']}/image")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    flatlay = np.array(Image.open(io.BytesIO(served.content)))
    assert flatlay.shape == (512, 512, 4)
    mask = flatlay[..., 3] > 0
    assert 0.15 < mask.mean() < 0.8
    tee = product_image(TEE)
    assert color.deltaE_ciede2000(mean_lab(flatlay[..., :3][mask]), mean_lab(tee[drawn_mask(TEE)])) < 5.0
    # Registered as usual: a try-on names it, and it is the tee again on the astronaut's torso.
    worn = np.array(Image.open(io.BytesIO(tryon_result(server, acme, person_jpeg, garment_id=garment["id"]))))
    original = np.array(Image.open(io.BytesIO(model_photo)))
    torso = (slice(330, 480), slice(150, 330))  # the middle of her chest, where the tee is in both
    assert color.deltaE_ciede2000(mean_lab(worn[torso]), mean_lab(original[torso])) < 8.0


def test_model_photo_refusals_have_stable_codes(server: Server, acme: Key, cat_jpeg: bytes, person_jpeg: bytes) -> None:
    with server.client(acme) as client:

        def register(photo: bytes, **fields: str) -> tuple[int, str]:
            response = client.post("/v1/garments", files={"image": ("p.jpg", photo, "image/jpeg")}, data=fields)
            return response.status_code, response.json()["error"]["code"]

        assert register(cat_jpeg, photo_type="model") == (422, "no_person_detected")
        # A half-body photo has no legs to take trousers off.
        assert register(person_jpeg, photo_type="model", category="lower") == (422, "category_unsupported")
        assert register(person_jpeg, photo_type="selfie") == (422, "photo_type_invalid")
        # The default photo_type is still flat_lay: a blank image is no product shot.
        assert register(encode(np.full((64, 64, 3), 255, np.uint8), "JPEG")) == (422, "garment_not_detected")
