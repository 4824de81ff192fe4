"""The studio's guard: every request passes it before a route sees it.

1. **Host** (DNS rebinding): the ``Host`` header must name this server (``127.0.0.1:PORT``,
   ``localhost:PORT``, ``[::1]:PORT`` or the ``--host`` it was started with); anything else is a 421.
2. **Token**: off loopback a token is required (``--token``). The user passes it once
   (``/?token=...``, answered with an HttpOnly SameSite=Strict cookie and a redirect that drops it from
   the address) or as ``Authorization: Bearer``; without it every request is a 401.
3. **Origin + CSRF** on every state-changing request (anything but GET/HEAD): ``Origin`` (or, when a
   browser sends none, the ``Referer``'s origin) must be this server's own origin, and the
   ``X-CSRF-Token`` header must equal the per-browser CSRF cookie (double submit; the page carries
   the token in a ``<meta>``); otherwise a 403.
4. **Headers** on every response: a Content-Security-Policy without remote sources or inline
   script (:data:`CSP`), ``nosniff``, no framing, no referrer; pages are never cached.

Cookie names carry the port: two studios on one machine never read each other's cookies.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

#: Content-Security-Policy of every studio response: own scripts, styles and images only; nothing remote.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SAFE_METHODS = ("GET", "HEAD")
CSRF_HEADER = "x-csrf-token"
MIN_TOKEN = 16


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost.

    >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0")
    (True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_literal(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass
class Guard:
    """What the guard checks against: where the server listens and the token, if any."""

    host: str
    port: int
    token: str | None = None
    extra_hosts: tuple[str, ...] = ()  # e.g. the test client's host
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    @property
    def csrf_cookie(self) -> str:
        return f"charkit_csrf_{self.port}"

    @property
    def auth_cookie(self) -> str:
        return f"charkit_auth_{self.port}"

    @property
    def any_host(self) -> bool:
        """Bound to every interface: the Host can be any of the machine's names (the token guards it)."""
        return self.host in ("0.0.0.0", "::")

    def allowed_hosts(self) -> set[str]:
        names = {"127.0.0.1", "localhost", "[::1]", _host_literal(self.host), *self.extra_hosts}
        out = {f"{n}:{self.port}" for n in names}
        if self.port == 80:
            out |= names
        return out

    def host_ok(self, host: str) -> bool:
        return self.any_host or host.lower() in self.allowed_hosts()

    def token_ok(self, presented: str | None) -> bool:
        return self.token is None or (
            presented is not None and hmac.compare_digest(presented.encode(), self.token.encode())
        )


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header reads as no cookies
        return {}
    return {k: m.value for k, m in jar.items()}


def _origin(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else None


class GuardMiddleware:
    """ASGI middleware applying :class:`Guard` (pure ASGI: it never buffers a response body)."""

    def __init__(self, app, guard: Guard):
        self.app = app
        self.guard = guard

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        g = self.guard
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if not g.host_ok(host):
            return await _refuse(send, 421, "unknown Host header: open the studio at the address it printed")
        cookies = _cookies(headers)
        method = scope["method"]
        extra: list[tuple[bytes, bytes]] = []
        if g.token is not None:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if "token" in query and method in SAFE_METHODS:
                if not g.token_ok(query["token"]):
                    return await _refuse(send, 401, "wrong token")
                rest = urlencode([(k, v) for k, v in parse_qsl(scope["query_string"].decode()) if k != "token"])
                # quoted and with one leading slash: never a header break, never "//other.host"
                location = "/" + quote(scope["path"].lstrip("/"), safe="/") + (f"?{rest}" if rest else "")
                cookie = f"{g.auth_cookie}={g.token}; Path=/; HttpOnly; SameSite=Strict"
                return await _redirect(send, location, [(b"set-cookie", cookie.encode())])
            bearer = headers.get("authorization", "")
            presented = bearer[7:] if bearer.lower().startswith("bearer ") else cookies.get(g.auth_cookie)
            if not g.token_ok(presented):
                return await _refuse(
                    send, 401, "this studio needs its token: open its address once with ?token=<token>"
                )
        csrf = cookies.get(g.csrf_cookie)
        if method not in SAFE_METHODS:
            origin = headers.get("origin") or (_origin(headers["referer"]) if "referer" in headers else None)
            if origin is None or origin.lower() != f"http://{host}".lower():
                return await _refuse(send, 403, "cross-origin request refused")
            if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
                return await _refuse(send, 403, "cross-site request refused")
            sent = headers.get(CSRF_HEADER)
            if not csrf or not sent or not hmac.compare_digest(sent.encode(), csrf.encode()):
                return await _refuse(send, 403, "missing or wrong CSRF token: reload the page")
        if not csrf or len(csrf) < 20:
            csrf = secrets.token_urlsafe(24)
            extra.append((b"set-cookie", f"{g.csrf_cookie}={csrf}; Path=/; HttpOnly; SameSite=Strict".encode()))
        scope.setdefault("state", {})["csrf"] = csrf

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                hdrs = [h for h in message.get("headers", []) if h[0].lower() != b"content-security-policy"]
                hdrs += security_headers() + extra
                message["headers"] = hdrs
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def security_headers() -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cross-origin-resource-policy", b"same-origin"),
    ]


async def _refuse(send, status: int, text: str) -> None:
    body = f"charkit studio: {text}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *security_headers(),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _redirect(send, location: str, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", location.encode("latin-1", "replace")),
                (b"content-length", b"0"),
                (b"cache-control", b"no-store"),
                *security_headers(),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})
