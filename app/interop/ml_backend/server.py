"""The Label Studio ML backend protocol over HTTP (Starlette, served by uvicorn; both come with Gradio).

    GET  /health, /            {"status": "UP", "model_class": "CondInst", "model_version", "training"}
    POST /setup                {"project", "schema": label config, ...} -> {"model_version"}
    POST /predict              {"tasks", "label_config", "params": {"context"}} -> {"results": [...]}
    POST /webhook              {"action": START_TRAINING | ANNOTATION_*, "project": {...}} -> 201 {"status"}
    POST /train                the older {"project": "<id>.<time>", "label_config"} -> 201 {"status"}
    GET  /metrics              {}

Every request must carry the HTTP basic auth configured in Label Studio's model settings ("Basic
Authentication"), unless the backend was started without one (loopback only). Bodies are capped
(`max_body` bytes), the model runs one request at a time (`Slot`: a bounded queue, then 503), and
an expected failure is one line: JSON ``{"error": ...}`` with a 4xx/5xx status, and the same line
in the backend's log. Label Studio itself only shows the status (it drops response bodies of errors).
"""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
import threading

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.errors import AppError
from app.interop.ml_backend.adapter import CondInstBackend, RequestError
from app.interop.ml_backend.client import FetchError
from app.interop.ml_backend.label_config import LabelConfigError
from app.retrain.jobs import RetrainError
from condinst.untrusted import InputError, parse_json

log = logging.getLogger("condinst.ml_backend")
MAX_BODY = 64 * 2**20


class Busy(Exception):
    """The model slot stayed taken, or too many requests wait for it."""


class Slot:
    """One model call at a time; at most `max_waiting` more callers wait, each at most `wait_s` seconds."""

    def __init__(self, max_waiting: int = 8, wait_s: float = 90.0):
        self._lock = threading.Lock()
        self._count = threading.Lock()
        self.max_waiting, self.wait_s = max_waiting, wait_s
        self.inside = 0  # running + waiting

    def run(self, fn, *args):
        with self._count:
            if self.inside > self.max_waiting:
                raise Busy(f"the model is busy with {self.inside} requests; try again shortly")
            self.inside += 1
        try:
            if not self._lock.acquire(timeout=self.wait_s):
                raise Busy(f"the model stayed busy for {self.wait_s:.0f} s; try again shortly")
            try:
                return fn(*args)
            finally:
                self._lock.release()
        finally:
            with self._count:
                self.inside -= 1


class TooLarge(RequestError):
    """A request body over the limit."""


def status_of(exc: Exception) -> int:
    if isinstance(exc, TooLarge):
        return 413
    if isinstance(exc, Busy):
        return 503
    if isinstance(exc, FetchError):
        return 502
    if isinstance(exc, RetrainError):
        return 409
    return 422


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"status": "error", "error": message}, status_code=status)


def authorized(request: Request, auth: tuple[str, str] | None) -> bool:
    if auth is None:
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return bool(sep) and hmac.compare_digest(user.encode(), auth[0].encode()) & hmac.compare_digest(
        password.encode(), auth[1].encode())


async def read_json(request: Request, limit: int) -> dict:
    """The request's JSON object, at most `limit` bytes; RequestError otherwise."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the request body is {int(declared)} bytes; at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the request body is larger than {limit} bytes")
    try:
        data = parse_json(bytes(body) or b"{}", "the request body")
    except InputError as exc:  # not JSON, or nested deeper than MAX_JSON_DEPTH
        raise RequestError(str(exc)) from None
    if not isinstance(data, dict):
        raise RequestError("the request body is not a JSON object")
    return data


def project_id(value) -> int:
    """Label Studio's project reference ("<id>.<created timestamp>", an int, or {"id": ...})."""
    if isinstance(value, dict):
        value = value.get("id")
    text = str(value)[:40].split(".", 1)[0]
    if not re.fullmatch(r"[0-9]{1,18}", text):
        raise RequestError(f"no project id in {str(value)[:60]!r}")
    return int(text)


def create_app(backend: CondInstBackend, auth: tuple[str, str] | None = None, max_body: int = MAX_BODY,
               slot: Slot | None = None) -> Starlette:
    """The Starlette app serving `backend` (see the module docstring)."""
    slot = slot or Slot()

    def endpoint(work, name: str, created: bool = False):
        async def handle(request: Request):
            if not authorized(request, auth):
                hint = (" (Label Studio's project webhooks carry no basic auth: add an Authorization header to the "
                        "webhook, or train with 'Start Training')" if name == "webhook" else "")
                log.warning("%s: refused a request without the right basic auth%s", name, hint)
                return JSONResponse({"status": "error", "error": "authentication required"}, status_code=401,
                                    headers={"WWW-Authenticate": 'Basic realm="CondInst ML backend"'})
            try:
                data = await read_json(request, max_body) if request.method == "POST" else {}
                answer = await run_in_threadpool(work, data)
            except (AppError, Busy) as exc:
                log.warning("%s: %s", name, exc)
                return error(status_of(exc), str(exc))
            except Exception:  # noqa: BLE001 - a bug: logged with its traceback, one line to the caller
                log.exception("%s failed", name)
                return error(500, f"{name} failed inside the backend; see its log")
            return JSONResponse(answer, status_code=201 if created else 200)
        return handle

    def health(_data):
        return backend.health()

    def setup(data):
        return backend.setup(data.get("schema"))

    def predict(data):
        params = data.get("params") if isinstance(data.get("params"), dict) else {}
        results = slot.run(backend.predict, data.get("tasks"), data.get("label_config"), params.get("context"))
        return {"results": results}

    def webhook(data):
        event = data.get("action")
        if not isinstance(event, str):
            raise RequestError("the webhook has no 'action'")
        return backend.fit(event, data)

    def train(data):
        return backend.train(project_id(data.get("project")), data.get("label_config"))

    routes = [Route("/", endpoint(health, "health"), methods=["GET"]),
              Route("/health", endpoint(health, "health"), methods=["GET"]),
              Route("/metrics", endpoint(lambda _data: {}, "metrics"), methods=["GET"]),
              Route("/setup", endpoint(setup, "setup"), methods=["POST"]),
              Route("/predict", endpoint(predict, "predict"), methods=["POST"]),
              Route("/webhook", endpoint(webhook, "webhook", created=True), methods=["POST"]),
              Route("/train", endpoint(train, "train", created=True), methods=["POST"])]
    return Starlette(routes=routes)


__all__ = ["create_app", "Slot", "Busy", "LabelConfigError"]
