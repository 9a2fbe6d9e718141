"""What the server shows before a login, and the login function Gradio calls.

Gradio (6.31) keeps every API route behind its login check (``/config``, ``/gradio_api/info``,
``/gradio_api/queue/join``...), but its page ``/`` embeds the whole API description
(``window.gradio_api_info``) even on the login screen. `LoginGate`, an ASGI middleware passed to
``launch(app_kwargs={"middleware": ...})``, blanks it whenever the page is the login screen
(its config says ``auth_required``), and tells the login function the client's address, which
Gradio does not pass, so `app.team.accounts.LoginGuard` can slow down guessing per address.
"""
from __future__ import annotations

import contextvars
import re

from starlette.middleware import Middleware

from app.team.accounts import Accounts

CLIENT_ADDRESS: contextvars.ContextVar[str] = contextvars.ContextVar("client_address", default="?")
API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.S)
LOGIN_SCREEN = re.compile(rb'"auth_required"\s*:\s*true')


class LoginGate:
    """ASGI middleware: the client address for /login; no API description on the login screen."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "").rstrip("/")
        if scope.get("method") == "POST" and path.endswith("/login"):
            token = CLIENT_ADDRESS.set((scope.get("client") or ("?",))[0])
            try:
                return await self.app(scope, receive, send)
            finally:
                CLIENT_ADDRESS.reset(token)
        if scope.get("method") == "GET" and path == "":
            return await self._page(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _page(self, scope, receive, send):
        """Buffer the page and blank its API description if it is the login screen."""
        start, chunks = {}, []

        async def buffered(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = b"".join(chunks)
                if LOGIN_SCREEN.search(body):
                    body = API_INFO.sub(b"window.gradio_api_info = {};</script>", body)
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, buffered)


def login_function(accounts: Accounts):
    """Gradio's ``auth=`` callable for these accounts (throttled per user and address)."""

    def check(username: str, password: str) -> bool:
        return accounts.check(username, password, CLIENT_ADDRESS.get())

    return check


def app_kwargs() -> dict:
    """The FastAPI arguments that install `LoginGate` and drop FastAPI's own route listing (``/openapi.json``,
    served without a login)."""
    return {"middleware": [Middleware(LoginGate)], "openapi_url": None, "docs_url": None, "redoc_url": None}
