"""The review page's request guards: security headers with a per-response script nonce, the
cross-site check (Origin / Sec-Fetch-Site), the per-session CSRF token, and the session's user."""

from __future__ import annotations

import hmac
import secrets
import time
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maskjob.review.auth import ReviewUser

__all__ = ["CSRF_FIELD", "CSRF_HEADER", "SecurityHeaders", "cross_site", "csrf_ok", "new_csrf", "nonce_of",
           "start_session", "tokens_match"]

CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


def nonce_of(request: Request) -> str:
    """This response's script/style nonce (made by :class:`SecurityHeaders`)."""
    return request.scope["maskjob_nonce"]


class SecurityHeaders:
    """ASGI middleware: CSP (only ``'self'`` and this response's nonce), no framing, referrers
    only to this site, no sniffing, no caching (the pages and pictures show people).

    Not ``Referrer-Policy: no-referrer``: under it browsers send ``Origin: null`` with a form's
    POST, which :func:`cross_site` must refuse (sandboxed frames send it too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(18)
        scope["maskjob_nonce"] = nonce
        csp = (f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self' blob:; "
               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", csp.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"cache-control", b"no-store"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                    (b"cross-origin-resource-policy", b"same-origin"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def cross_site(request: Request) -> bool:
    """True when a browser says the request comes from another site: an ``Origin`` whose host
    is not this ``Host``, or ``Sec-Fetch-Site`` other than same-origin / none."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    host = request.headers.get("host", "")
    return origin == "null" or urlsplit(origin).netloc.lower() != host.lower()


def new_csrf() -> str:
    """A fresh CSRF token."""
    return secrets.token_urlsafe(32)


def tokens_match(expected: object, given: str | None) -> bool:
    """True when both tokens are non-empty text and equal (constant-time compare)."""
    if not isinstance(expected, str) or not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def csrf_ok(request: Request, given: str | None) -> bool:
    """True when ``given`` (form field or header) equals the session's token."""
    return tokens_match(request.session.get(CSRF_FIELD), given)


def start_session(request: Request, user: ReviewUser) -> None:
    """A new session for ``user`` (the old one, login token included, is dropped)."""
    request.session.clear()
    request.session.update({"user": user.username, CSRF_FIELD: new_csrf(), "login_at": time.time()})
