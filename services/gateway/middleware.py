"""The request-body limit, enforced before any route reads a byte.

A declared Content-Length over the limit is refused at once; a body sent without one (chunked) is
counted as it streams and refused as soon as it passes the limit, so nothing buffers more than
FITROOM_MAX_REQUEST_BYTES.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import RequestTooLarge
from services.gateway.errors import error_response


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = RequestTooLarge(f"the request body is over the limit of {self.max_bytes:,} bytes")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(too_large, {"Connection": "close"})(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large  # answered 413 by the FitroomError handler of the route reading it
            return message

        await self.app(scope, counting_receive, send)
