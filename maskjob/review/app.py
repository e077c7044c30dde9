"""The review web page: a standalone Starlette app served by ``maskjob review serve``.

One face at a time, most useful first (the queue of :func:`maskjob.storage.reviews.review_queue`);
one key or click per decision. The page holds the current face and the next one (its pictures
already fetched), so a decision shows the next face at once, and its one POST returns the face
after that. Viewers browse with faces blurred (when ``blur_faces``) and cannot write.

Example:
    >>> app = create_app(settings)    # doctest: +SKIP
    >>> serve(settings, app)          # doctest: +SKIP  (until Ctrl-C)
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jinja2
import uvicorn
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from maskjob.config import Settings
from maskjob.errors import MaskjobError
from maskjob.reporting.render import template_environment
from maskjob.review.auth import LoginLimiter, ReviewUser, authenticate, get_user, session_secret
from maskjob.review.crops import FrameReader, context_jpeg, crop_jpeg, face_frame
from maskjob.review.items import STRATA, face_view, latest_live_review
from maskjob.review.queue import ServedQueue
from maskjob.review.security import (CSRF_FIELD, CSRF_HEADER, SecurityHeaders, cross_site, csrf_ok, new_csrf,
                                     nonce_of, start_session, tokens_match)
from maskjob.storage.database import open_database
from maskjob.storage.reviews import record_review, undo_review
from maskjob.vocab import CLASSES, NOT_A_FACE, REVIEW_LABELS

__all__ = ["SKIP", "create_app", "serve"]

logger = logging.getLogger(__name__)

SKIP = "skip"
SESSION_COOKIE = "maskjob_review"
MAX_HOLDING = 50
MAX_NOTE_CHARS = 500
KEYS = {"1": "with_mask", "2": "without_mask", "3": "partial_mask", "0": NOT_A_FACE}


class _State:
    """What the app keeps between requests: engine, settings, limiter, frame cache, served queue."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.limiter = LoginLimiter(settings.review_login_attempts, settings.review_login_window_s)
        self.frames = FrameReader(settings.inbox_dir, settings.max_image_pixels)
        self.templates: jinja2.Environment = template_environment()
        self.session_s = settings.review_session_hours * 3600
        self.queue = ServedQueue(settings, engine)


def _state(request: Request) -> _State:
    return request.app.state.review


def _error(request: Request, status: int, message: str) -> Response:
    wants_json = request.url.path in ("/review", "/undo", "/next") or "json" in request.headers.get("accept", "")
    if wants_json:
        return JSONResponse({"error": message}, status_code=status)
    return _page(request, "review/error.html", {"message": message, "status": status}, status)


def _page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    template = _state(request).templates.get_template(name)
    html = template.render(nonce=nonce_of(request), **context)
    return HTMLResponse(html, status_code=status)


def _user(request: Request) -> ReviewUser | None:
    """The session's user, if the session is live: within ``review_session_hours`` of login, the
    account enabled and its password (or state) unchanged since."""
    name, login_at = request.session.get("user"), request.session.get("login_at")
    if not isinstance(name, str) or not isinstance(login_at, (int, float)):
        return None
    if time.time() - login_at > _state(request).session_s:
        request.session.clear()
        return None
    user = get_user(_state(request).engine, name)
    changed = user.password_changed_at.timestamp() if user and user.password_changed_at else 0.0
    if user is None or user.disabled or changed > login_at + 1.0:
        request.session.clear()
        return None
    return user


async def _writer(request: Request) -> tuple[ReviewUser, dict[str, str]]:
    """The logged-in reviewer or admin behind a same-site POST carrying the session's CSRF token,
    and the form fields; else an ``HTTPException`` (401, 403)."""
    if cross_site(request):
        raise HTTPException(403, "cross-site request refused")
    user = await run_in_threadpool(_user, request)
    if user is None:
        raise HTTPException(401, "log in first (your session ended or you are not logged in)")
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not csrf_ok(request, request.headers.get(CSRF_HEADER) or fields.get(CSRF_FIELD)):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    if not user.can_write:
        raise HTTPException(403, f"{user.username} is a viewer: viewers cannot record reviews")
    return user, fields


def _camera(value: str | None) -> str | None:
    return value or None


def _ids(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise HTTPException(400, "holding must be face ids separated by commas") from None
    return ids[:MAX_HOLDING]


def _face_id(text: str | None) -> int:
    try:
        return int(text or "")
    except ValueError:
        raise HTTPException(400, "face_id must be a whole number (the face's id)") from None


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def favicon(request: Request) -> Response:
    return Response(status_code=204)


async def login_form(request: Request) -> Response:
    if await run_in_threadpool(_user, request) is not None:
        return RedirectResponse("/", status_code=303)
    request.session.clear()
    request.session["login_csrf"] = new_csrf()
    return _page(request, "review/login.html", {"token": request.session["login_csrf"], "message": None})


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def login(request: Request) -> Response:
    state = _state(request)
    if cross_site(request):
        raise HTTPException(403, "cross-site login refused")
    form = await request.form()
    username, password = str(form.get("username", "")).strip(), str(form.get("password", ""))
    token = request.session.get("login_csrf")
    if not tokens_match(token, str(form.get(CSRF_FIELD, ""))):
        raise HTTPException(403, "the login form expired: reload the page and try again")
    address = _client(request)
    wait_s = state.limiter.retry_after_s(username, address)
    if wait_s > 0:
        logger.warning("review login refused (rate limit) for %r from %s", username, address)
        message = (f"Too many failed logins for this user from this address: try again in about "
                   f"{max(1, round(wait_s / 60))} minute(s).")
        response = _page(request, "review/login.html", {"token": token, "message": message}, 429)
        response.headers["retry-after"] = str(int(wait_s) + 1)
        return response
    user = await run_in_threadpool(authenticate, state.engine, username, password)
    if user is None:
        state.limiter.failed(username, address)
        logger.info("review login failed for %r from %s", username, address)
        return _page(request, "review/login.html", {"token": token, "message": "Wrong user name or password."}, 401)
    state.limiter.succeeded(username, address)
    start_session(request, user)
    logger.info("review login: %s (%s) from %s", user.username, user.role, address)
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> Response:
    if cross_site(request):
        raise HTTPException(403, "cross-site request refused")
    form = await request.form()
    if not csrf_ok(request, str(form.get(CSRF_FIELD, ""))):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


async def queue_page(request: Request) -> Response:
    state = _state(request)
    user = await run_in_threadpool(_user, request)
    if user is None:
        return RedirectResponse("/login", status_code=303)
    camera = _camera(request.query_params.get("camera"))
    items = await run_in_threadpool(state.queue.next_items, user, camera, [], 2)
    counts = await run_in_threadpool(state.queue.counts, camera)
    data = {"items": items, "counts": counts, "order": list(counts), "camera": camera, "can_write": user.can_write,
            "keys": KEYS, "skip": SKIP, "classes": list(CLASSES)}
    return _page(request, "review/queue.html", {
        "user": user, "camera": camera, "item": items[0] if items else None, "counts": counts, "data": data,
        "csrf": request.session.get(CSRF_FIELD, ""), "classes": CLASSES, "blurred": _blur(state, user),
        "note_chars": MAX_NOTE_CHARS,
    })


def _blur(state: _State, user: ReviewUser) -> bool:
    return state.settings.blur_faces and user.role == "viewer"


async def next_faces(request: Request) -> Response:
    state = _state(request)
    user = await run_in_threadpool(_user, request)
    if user is None:
        raise HTTPException(401, "log in first (your session ended or you are not logged in)")
    camera = _camera(request.query_params.get("camera"))
    holding = _ids(request.query_params.get("holding"))
    if request.query_params.get("skip"):
        state.queue.skip(user.username, _face_id(request.query_params.get("skip")))
    items = await run_in_threadpool(state.queue.next_items, user, camera, holding, 1)
    counts = await run_in_threadpool(state.queue.counts, camera)
    return JSONResponse({"item": items[0] if items else None, "counts": counts})


async def review(request: Request) -> Response:
    state = _state(request)
    user, fields = await _writer(request)
    face_id, label = _face_id(fields.get("face_id")), fields.get("label", "")
    stratum = fields.get("stratum") or "other"
    if label != SKIP and label not in REVIEW_LABELS:
        raise HTTPException(400, f"unknown label {label!r}: use one of {', '.join(REVIEW_LABELS)} or {SKIP}")
    if stratum not in STRATA:
        raise HTTPException(400, f"unknown stratum {stratum!r}: use one of {', '.join(STRATA)}")
    note = (fields.get("note") or "").strip() or None
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise HTTPException(400, f"the note has {len(note)} characters: at most {MAX_NOTE_CHARS}")
    camera = _camera(fields.get("camera"))
    holding = _ids(fields.get("holding"))
    review_id = None
    if label == SKIP:
        state.queue.skip(user.username, face_id)
    else:
        try:
            review_id = await run_in_threadpool(record_review, state.engine, face_id, user.username, label,
                                                note=note, stratum=stratum)
        except MaskjobError as exc:  # label and stratum are checked above: the face is unknown
            raise HTTPException(404, str(exc)) from None
        state.queue.unskip(user.username, face_id)
    state.queue.release(face_id)
    items = await run_in_threadpool(state.queue.next_items, user, camera, holding, 1)
    if review_id is not None:
        state.queue.adjust(camera, stratum, -1)
    counts = await run_in_threadpool(state.queue.counts, camera)
    return JSONResponse({"review_id": review_id, "item": items[0] if items else None, "counts": counts})


async def undo(request: Request) -> Response:
    state = _state(request)
    user, fields = await _writer(request)
    latest = await run_in_threadpool(latest_live_review, state.engine, user.username)
    if latest is None:
        raise HTTPException(404, "nothing to undo: you have no review left that is not undone")
    review_id, face_id, stratum = latest
    try:
        await run_in_threadpool(undo_review, state.engine, review_id, user.username)
    except MaskjobError as exc:  # undone in another tab a moment ago
        raise HTTPException(409, str(exc)) from None
    item = None if face_id is None else await run_in_threadpool(face_view, state.engine, face_id, stratum)
    camera = _camera(fields.get("camera"))
    state.queue.adjust(camera, stratum, +1)
    counts = await run_in_threadpool(state.queue.counts, camera)
    return JSONResponse({"undone": review_id, "item": item, "counts": counts})


async def picture(request: Request) -> Response:
    state = _state(request)
    user = await run_in_threadpool(_user, request)
    if user is None:
        raise HTTPException(401, "log in first (your session ended or you are not logged in)")
    face_id = int(request.path_params["face_id"])
    kind = request.path_params["kind"]
    if kind not in ("crop", "context"):
        raise HTTPException(404, "no such picture: use crop.jpg or context.jpg")
    face = await run_in_threadpool(face_frame, state.engine, face_id)
    if face is None:
        raise HTTPException(404, f"no face {face_id}")
    try:
        rgb = await run_in_threadpool(state.frames.rgb, face.image_path)
    except MaskjobError as exc:
        logger.warning("review picture of face %d: %s", face_id, exc)
        raise HTTPException(404, "the frame of this face cannot be shown (missing or refused file)") from None
    make = crop_jpeg if kind == "crop" else context_jpeg
    body = await run_in_threadpool(make, rgb, face, _blur(state, user))
    return Response(body, media_type="image/jpeg")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(request, exc.status_code, str(exc.detail))


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.error("review page: %s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return _error(request, 500, "the server could not do that; the error is in the server's log")


def create_app(settings: Settings, engine: Engine | None = None) -> Starlette:
    """The review app for ``settings`` (database ``settings.database_url`` unless ``engine``).

    Raises:
        MaskjobError: the database is unreachable or not migrated, or the key file is unusable.
    """
    engine = engine or open_database(settings.database_url)
    secret = session_secret(settings)
    routes = [
        Route("/healthz", healthz),
        Route("/favicon.ico", favicon),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", queue_page),
        Route("/next", next_faces),
        Route("/review", review, methods=["POST"]),
        Route("/undo", undo, methods=["POST"]),
        Route("/face/{face_id:int}/{kind:str}.jpg", picture),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(SessionMiddleware, secret_key=secret, session_cookie=SESSION_COOKIE,
                   max_age=max(int(settings.review_session_hours * 3600), 1), same_site="strict",
                   https_only=settings.review_secure_cookies),
    ]
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.state.review = _State(settings, engine)
    return app


def serve(settings: Settings, app: Starlette | None = None) -> None:
    """Serve ``app`` (default: :func:`create_app` of ``settings``) on ``review_host``:``review_port``
    with uvicorn until interrupted."""
    app = app or create_app(settings)
    logger.info("review page on http://%s:%d/", settings.review_host, settings.review_port)
    uvicorn.run(app, host=settings.review_host, port=settings.review_port, log_level="warning", access_log=False,
                server_header=False)
