"""Outbound HTTP for untrusted URLs: image inputs given as URLs and webhook callbacks.

A URL from a client must never make the gateway reach into its own network (server-side request
forgery: the cloud metadata service at 169.254.169.254, an admin port on localhost, a database on
10.x). So:
- only https, no credentials in the URL, a port in 1..65535;
- the host is resolved once and *every* address it resolves to must be public; the connection then
  goes to that vetted address (a DNS answer that changes between check and connect cannot slip a
  private address in), while TLS still verifies the certificate for the host name;
- redirects are followed by hand, at most `max_redirects`, each hop checked again;
- one deadline covers the whole fetch, and the body is cut off past `max_bytes`.
`allow_hosts` ("host:port" entries, FITROOM_URL_ALLOW_HOSTS) lifts the scheme and address rules
for exactly those endpoints: tests and on-premises image servers.

httpcore (httpx's transport) is used directly because it lets us supply the connect step.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
import typing
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import certifi
import httpcore

from services.common.errors import ImageTooLarge, UrlFetchFailed, UrlForbidden

_REDIRECTS = (301, 302, 303, 307, 308)
_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 2048
USER_AGENT = "Fitroom/1 (+https://github.com/fitroom)"


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    allowlisted: bool


class UrlPolicy:
    """Which URLs may be fetched, and which addresses they may connect to."""

    def __init__(self, allow_hosts: frozenset[str] = frozenset()) -> None:
        self.allow_hosts = allow_hosts

    def check(self, url: str) -> Target:
        """The URL's parts if it may be fetched; UrlForbidden (with the reason) otherwise."""
        if len(url) > MAX_URL_LENGTH:
            raise UrlForbidden(f"the URL is longer than {MAX_URL_LENGTH} characters")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
            raise UrlForbidden("the URL contains spaces or control characters")
        try:
            parts = urlsplit(url)
            port = parts.port
            host = parts.hostname
        except ValueError as exc:
            raise UrlForbidden(f"the URL is malformed ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise UrlForbidden(f"only https URLs are fetched, not {scheme or 'scheme-less'} URLs")
        if not host:
            raise UrlForbidden("the URL has no host")
        if parts.username is not None or parts.password is not None:
            raise UrlForbidden("credentials in URLs are not accepted")
        port = port if port is not None else _DEFAULT_PORTS[scheme]
        if not 0 < port < 65536:
            raise UrlForbidden(f"port {port} is not a valid port")
        allowlisted = f"{host}:{port}" in self.allow_hosts
        if scheme != "https" and not allowlisted:
            raise UrlForbidden("only https URLs are fetched")
        if not allowlisted:
            self._refuse_literal(host)
        return Target(url=url, scheme=scheme, host=host, port=port, allowlisted=allowlisted)

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to: all of them public, or UrlForbidden / UrlFetchFailed."""
        if f"{host.lower()}:{port}" in self.allow_hosts:
            return [info[4][0] for info in _getaddrinfo(host, port)]
        addresses = [info[4][0] for info in _getaddrinfo(host, port)]
        private = [a for a in addresses if not _is_public(a)]
        if private:
            # Refuse the host outright, even if it also has public addresses: the connect would
            # otherwise depend on which address a resolver happens to list first.
            raise UrlForbidden(f"{host} resolves to a non-public address ({private[0]}); it is not fetched")
        return addresses

    @staticmethod
    def _refuse_literal(host: str) -> None:
        """Fail fast, before any DNS, on hosts that are private by their very name."""
        name = host.lower().rstrip(".")
        if name == "localhost" or name.endswith((".localhost", ".local", ".internal")):
            raise UrlForbidden(f"{host} is not a public host")
        try:
            literal = ipaddress.ip_address(name)
        except ValueError:
            return
        if not _is_public(str(literal)):
            raise UrlForbidden(f"{host} is not a public address")


def _getaddrinfo(host: str, port: int) -> list[tuple[typing.Any, ...]]:
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UrlFetchFailed(f"cannot resolve {host}: {exc}") from None


class _GuardedBackend(httpcore.SyncBackend):
    """The connect step of every outbound request: resolve, vet, connect to a vetted address."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        last_error: Exception | None = None
        for address in self.policy.resolve(host, port):
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        raise httpcore.ConnectError(f"cannot connect to {host}:{port}: {last_error}")


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


class SafeFetcher:
    """GET images and POST webhooks to untrusted URLs under one UrlPolicy."""

    def __init__(self, policy: UrlPolicy, timeout_s: float, max_redirects: int) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        # No proxies from the environment (a proxy would make the address check moot), no retries.
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl.create_default_context(cafile=certifi.where()),
            network_backend=_GuardedBackend(policy),
            max_connections=32,
            retries=0,
        )

    def get_image(self, url: str, max_bytes: int) -> bytes:
        """The body of `url`, following redirects; ImageTooLarge past max_bytes."""
        deadline = time.monotonic() + self.timeout_s
        for _hop in range(self.max_redirects + 1):
            target = self.policy.check(url)
            status, location, body = self._request("GET", target, deadline, max_bytes=max_bytes)
            if status in _REDIRECTS and location:
                url = urljoin(url, location)
                continue
            if not 200 <= status < 300:
                raise UrlFetchFailed(f"fetching {_redact(target.url)} answered HTTP {status}")
            return body
        raise UrlFetchFailed(f"more than {self.max_redirects} redirects")

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Response:
        """POST without following redirects (a webhook receiver answers where it was asked)."""
        deadline = time.monotonic() + self.timeout_s
        status, _location, response = self._request(
            "POST", self.policy.check(url), deadline, body=body, headers=headers, max_bytes=64 * 1024
        )
        return Response(status, response)

    def close(self) -> None:
        self._pool.close()

    def _request(
        self,
        method: str,
        target: Target,
        deadline: float,
        *,
        max_bytes: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str | None, bytes]:
        request_headers = [("User-Agent", USER_AGENT), ("Accept-Encoding", "identity"), *(headers or {}).items()]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UrlFetchFailed(f"{_redact(target.url)} did not answer within {self.timeout_s:g} s")
        timeouts = {"connect": remaining, "read": remaining, "write": remaining, "pool": remaining}
        try:
            with self._pool.stream(
                method, target.url, headers=request_headers, content=body, extensions={"timeout": timeouts}
            ) as response:
                headers_ = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
                if response.status in _REDIRECTS:
                    return response.status, headers_.get("location"), b""
                declared = headers_.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise ImageTooLarge(f"{_redact(target.url)} is {int(declared):,} bytes, over {max_bytes:,}")
                chunks, size = [], 0
                for chunk in response.iter_stream():
                    size += len(chunk)
                    if size > max_bytes:
                        raise ImageTooLarge(f"{_redact(target.url)} is over {max_bytes:,} bytes")
                    if time.monotonic() > deadline:
                        raise UrlFetchFailed(f"{_redact(target.url)} did not finish within {self.timeout_s:g} s")
                    chunks.append(chunk)
                return response.status, None, b"".join(chunks)
        except httpcore.TimeoutException:
            raise UrlFetchFailed(f"{_redact(target.url)} did not answer within {self.timeout_s:g} s") from None
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            raise UrlFetchFailed(f"cannot fetch {_redact(target.url)}: {exc or type(exc).__name__}") from None
        except ssl.SSLError as exc:
            raise UrlFetchFailed(f"TLS failed for {_redact(target.url)}: {exc.reason}") from None
        except (ValueError, UnicodeError) as exc:  # a host or path httpcore cannot put on the wire
            raise UrlForbidden(f"the URL cannot be requested: {exc}") from None


def _redact(url: str) -> str:
    """The URL without its query string, which may carry a signed-URL token, for messages and logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
