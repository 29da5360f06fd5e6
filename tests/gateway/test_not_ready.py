"""A server whose models are not built: alive, not ready, and its jobs fail with model_unavailable
(a 503-class error that is not the caller's fault) instead of hanging or answering 500."""

from __future__ import annotations

from pathlib import Path

from tests.gateway.helpers import Server, wait_finished


def test_missing_models_make_the_server_unready_not_broken(tmp_path: Path, person_jpeg: bytes, tee_png: bytes) -> None:
    empty = tmp_path / "no_models"
    (empty / "pose_detection").mkdir(parents=True)
    (empty / "pose_detection" / "config.pbtxt").write_text('name: "pose_detection"\n')  # declared, never built
    server = Server(tmp_path / "data", {"FITROOM_MODEL_REPOSITORY": str(empty)})
    key = server.create_key("acme")
    server.start(ready=False)
    try:
        with server.client(key) as client:
            assert client.get("/healthz").status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["status"] == "unavailable" and ready.json()["checks"]["models"] != "ok"
            assert ready.json()["checks"]["database"] == "ok"

            files = {"person": ("p.jpg", person_jpeg, "image/jpeg"), "garment": ("g.png", tee_png, "image/png")}
            job = client.post("/v1/tryon", files=files).json()
            done = wait_finished(client, job["id"])
            assert done["status"] == "failed" and done["error"]["code"] == "model_unavailable"
            result = client.get(f"/v1/tryon/{job['id']}/result")
            assert result.status_code == 409 and result.json()["error"]["code"] == "model_unavailable"
    finally:
        server.stop()
    assert "Traceback" not in server.log()
