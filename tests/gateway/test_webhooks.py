"""Webhooks from the real server to a local receiver: signed, verified as a receiver would
(the recipe in docs/API.md, written out here rather than imported), retried with backoff."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx

from services.common.config import PROJECT_ROOT
from services.gateway.webhooks import sign, signature_header, verify_signature
from tests.gateway.conftest import WEBHOOK_BACKOFF_S, WEBHOOK_MAX_ATTEMPTS, Receiver
from tests.gateway.helpers import Key, Recorded, Server, wait_finished, wait_until


def receiver_verifies(secret: str, request: Recorded, tolerance_s: float = 300) -> bool:
    """What a retailer's endpoint does with the raw body and the Fitroom-Signature header."""
    fields = dict(item.split("=", 1) for item in request.headers["fitroom-signature"].split(","))
    timestamp, signature = fields["t"], fields["v1"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature, expected) and abs(time.time() - int(timestamp)) <= tolerance_s


def documented_verify() -> Callable[[str, str, bytes], bool]:
    """The `verify` function docs/API.md gives receivers, run as written there."""
    text = (PROJECT_ROOT / "docs" / "API.md").read_text()
    match = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert match, "docs/API.md shows a receiver's verify function"
    namespace: dict[str, Any] = {}
    exec(match.group(1), namespace)
    return namespace["verify"]


def webhook_status(client: httpx.Client, job_id: str) -> str | None:
    """The job's webhook state; None until the job has finished and queued its webhook."""
    webhook = client.get(f"/v1/tryon/{job_id}").json()["webhook"]
    return None if webhook is None else webhook["status"]


def submit(server: Server, key: Key, callback_url: str, person: bytes, garment: bytes) -> str:
    with server.client(key) as client:
        files = {"person": ("p.jpg", person, "image/jpeg"), "garment": ("g.png", garment, "image/png")}
        response = client.post("/v1/tryon", files=files, data={"callback_url": callback_url})
        assert response.status_code == 202, response.text
        return response.json()["id"]


def test_the_finished_job_is_posted_signed(
    server: Server, acme: Key, receiver: Receiver, person_jpeg: bytes, tee_png: bytes
) -> None:
    job_id = submit(server, acme, f"{receiver.url}/ok", person_jpeg, tee_png)
    assert wait_until(lambda: any(json.loads(r.body)["data"]["id"] == job_id for r in receiver.requests_to("/ok")), 60)
    (request,) = [r for r in receiver.requests_to("/ok") if json.loads(r.body)["data"]["id"] == job_id]
    assert request.headers["content-type"] == "application/json"
    assert receiver_verifies(acme.webhook_secret, request)
    verify = documented_verify()
    assert verify(acme.webhook_secret, request.headers["fitroom-signature"], request.body)
    assert not verify(acme.webhook_secret, request.headers["fitroom-signature"], request.body + b" ")
    assert not receiver_verifies(acme.webhook_secret + "x", request)
    tampered = Recorded(request.path, request.headers, request.body.replace(b"succeeded", b"failed"), request.at)
    assert not receiver_verifies(acme.webhook_secret, tampered)

    event = json.loads(request.body)
    assert event["id"] == request.headers["fitroom-event-id"] and event["id"].startswith("evt_")
    assert event["type"] == "tryon.succeeded"
    assert event["data"]["status"] == "succeeded"
    assert event["data"]["result_url"] == f"{server.url}/v1/tryon/{job_id}/result"
    with server.client(acme) as client:
        assert wait_until(lambda: webhook_status(client, job_id) == "delivered", 10)
        assert client.get(f"/v1/tryon/{job_id}").json()["webhook"] == {
            "status": "delivered",
            "attempts": 1,
            "last_error": None,
        }
        # What the webhook carries is what GET shows (bar the webhook's own state).
        shown = client.get(f"/v1/tryon/{job_id}").json()
        assert {k: v for k, v in shown.items() if k != "webhook"} == {
            k: v for k, v in event["data"].items() if k != "webhook"
        }


def test_deliveries_are_retried_with_backoff_until_the_receiver_takes_them(
    server: Server, acme: Key, receiver: Receiver, person_jpeg: bytes, tee_png: bytes
) -> None:
    job_id = submit(server, acme, f"{receiver.url}/flaky", person_jpeg, tee_png)  # 500, 500, then 200
    with server.client(acme) as client:
        assert wait_finished(client, job_id)["status"] == "succeeded"
        assert wait_until(lambda: webhook_status(client, job_id) == "delivered", 30)
        assert client.get(f"/v1/tryon/{job_id}").json()["webhook"]["attempts"] == 3
    attempts = receiver.requests_to("/flaky")
    assert len(attempts) == 3
    assert len({a.headers["fitroom-event-id"] for a in attempts}) == 1  # the same event, for deduplication
    assert all(receiver_verifies(acme.webhook_secret, a) for a in attempts)  # each one signed afresh
    first_gap, second_gap = attempts[1].at - attempts[0].at, attempts[2].at - attempts[1].at
    assert first_gap >= WEBHOOK_BACKOFF_S * 0.9
    assert second_gap >= 2 * WEBHOOK_BACKOFF_S * 0.9  # exponential: twice the wait


def test_a_receiver_that_keeps_failing_is_given_up_on(
    server: Server, globex: Key, receiver: Receiver, person_jpeg: bytes, cat_jpeg: bytes, tee_png: bytes
) -> None:
    job_id = submit(server, globex, f"{receiver.url}/down", cat_jpeg, tee_png)  # and the job fails too
    with server.client(globex) as client:
        assert wait_until(lambda: webhook_status(client, job_id) == "failed", 60)
        job = client.get(f"/v1/tryon/{job_id}").json()
    assert job["webhook"] == {"status": "failed", "attempts": WEBHOOK_MAX_ATTEMPTS, "last_error": "HTTP 500"}
    events = [json.loads(r.body) for r in receiver.requests_to("/down")]
    assert len(events) == WEBHOOK_MAX_ATTEMPTS
    assert events[0]["type"] == "tryon.failed" and events[0]["data"]["error"]["code"] == "no_person_detected"
    assert all(receiver_verifies(globex.webhook_secret, r) for r in receiver.requests_to("/down"))


def test_verify_signature_helper() -> None:
    body = b'{"id":"evt_1"}'
    header = signature_header("whsec_test", body, timestamp=1_700_000_000)
    assert header == f"t=1700000000,v1={sign('whsec_test', 1_700_000_000, body)}"
    assert verify_signature("whsec_test", header, body, now=1_700_000_100)
    assert not verify_signature("whsec_test", header, body, now=1_700_000_000 + 301)  # a replay, too old
    assert not verify_signature("whsec_other", header, body, now=1_700_000_000)
    assert not verify_signature("whsec_test", header, body + b" ", now=1_700_000_000)
    assert not verify_signature("whsec_test", "v1=abc", body)
    assert not verify_signature("whsec_test", "t=x,v1=abc", body)
    # A receiver mid-rotation may get several v1 signatures: any one matching is enough.
    assert verify_signature("whsec_test", header.replace("v1=", "v1=00,v1="), body, now=1_700_000_000)
