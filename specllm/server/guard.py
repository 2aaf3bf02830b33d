"""What every request passes: the API key, the request counters, and a last line of defence
that turns an escaping exception into one log line and a 500, never a traceback; and the
errors in OpenAI's shape ({"error": {"message", "type", "param", "code"}})."""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Optional

from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .schemas import error_body

if TYPE_CHECKING:
    from .app import ServerState

log = logging.getLogger("specllm.server")

# Status logged and counted for a request whose client left before the answer (nginx's code).
CLIENT_CLOSED = 499
PUBLIC_PATHS = ("/health",)  # answered without the API key: load balancers probe it


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = error_body(self.message, kind=self.kind, param=self.param, code=self.code)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


async def api_error_response(http: HttpRequest, error: ApiError) -> Response:
    if error.status >= 500 and error.status != 503:  # 503: busy or stopping, not a failure
        log.error("%s %s -> %d: %s", http.method, http.url.path, error.status, error.message)
    else:
        log.warning("%s %s -> %d: %s", http.method, http.url.path, error.status, error.message)
    return error.response()


async def http_error_response(http: HttpRequest, error: HTTPException) -> Response:
    message = {404: f"no route {http.url.path}", 405: f"{http.method} is not allowed on {http.url.path}"}
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(message.get(error.status_code, str(error.detail)), kind=kind),
                        status_code=error.status_code, headers=getattr(error, "headers", None))


class Guard:
    """Outermost layer: the API key, the request counters, and the last line of defence: an
    exception escaping a route becomes one log line and a 500, never a traceback."""

    def __init__(self, app: ASGIApp, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: Optional[int] = None

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self._authorized(scope):
                await self.app(scope, receive, send_noting_status)
            else:
                error = ApiError(401, "a valid API key is required: Authorization: Bearer <key>",
                                 code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await error.response()(scope, receive, send_noting_status)
        except Exception as e:
            log.error("internal error on %s %s: %s: %s", scope.get("method"), scope.get("path"),
                      type(e).__name__, e)
            if status is None:
                try:
                    response = ApiError(500, f"internal error: {type(e).__name__}", kind="server_error").response()
                    await response(scope, receive, send_noting_status)
                except Exception:  # the client is gone too
                    pass
        finally:
            self.state.metrics.count_request(scope.get("path", ""), status or CLIENT_CLOSED)

    def _authorized(self, scope: Scope) -> bool:
        key = self.state.api_key
        if not key or scope.get("path") in PUBLIC_PATHS:
            return True
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())
