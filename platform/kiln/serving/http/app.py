"""The KServe v2 REST protocol over the serving core, independent of any HTTP server library.

    app = HttpApp(core, settings)
    response = await app.handle(HttpRequest("POST", "/v2/models/digits/infer", headers, body))

`HttpApp.handle` routes one parsed request to the core and returns the response; it never
raises. An HTTP stack (`kiln.serving.http.server`: aiohttp's) only parses, limits and writes;
benchmarks/http_stacks.py serves this same handler over other stacks to compare them.

Endpoints: health, server and model metadata, model ready, infer (JSON or Triton's binary
tensor extension), Triton's model configuration, statistics and model repository extensions,
and Kiln's feedback (`POST /v2/models/{m}/feedback`). docs/user-guide/http.md lists them with
`curl` examples. Errors answer `{"error": "..."}` with the status of `status.STATUS`.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from kiln.errors import FeedbackRejected, InferRequestInvalid, NotAuthenticated, quote
from kiln.serving.control import repository_reference
from kiln.serving.core import ServingCore
from kiln.serving.http import convert, documents
from kiln.serving.http.status import JSON, error_body, failure
from kiln.serving.messages import Feedback
from kiln.serving.settings import ServingSettings

OCTET_STREAM: Final = "application/octet-stream"

ACCEPTED_BODY_TYPES: Final = frozenset(
    {
        "",
        JSON,
        OCTET_STREAM,
        "text/plain",
        # curl's default for `-d`: the body is still this protocol's JSON, as Triton reads it.
        "application/x-www-form-urlencoded",
    }
)
"""Content types a request body may declare (parameters such as charset aside)."""


@dataclass(slots=True)
class HttpRequest:
    """One request as an HTTP stack parsed it."""

    method: str
    """Upper case: GET, POST, ..."""
    path: str
    """Percent-decoded, without the query string: `/v2/models/digits/infer`."""
    headers: Mapping[str, str]
    """Header names in lower case."""
    body: bytes = b""
    """The body, de-compressed (Content-Encoding is the stack's business)."""


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    """Content-Type and protocol headers; the stack adds Content-Length."""


class HttpProblem(Exception):
    """A request this protocol cannot take, whatever the core would say: no such endpoint,
    the wrong method, a body of the wrong type or too large."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


Handler = Callable[..., Awaitable[HttpResponse]]

_MODEL_ACTIONS: Final = {
    "": ("GET", "_model_metadata"),
    "ready": ("GET", "_model_ready"),
    "config": ("GET", "_config"),
    "stats": ("GET", "_statistics"),
    "infer": ("POST", "_infer"),
    "feedback": ("POST", "_feedback"),
}
"""/v2/models/NAME[/versions/V]/ACTION: the method and handler of each action (feedback takes
no version: labels belong to the request, whichever version answered it)."""

_JSON_HEADERS: Final = (("content-type", JSON),)
_EMPTY_OK: Final = HttpResponse(200)
_NO_BINARY: Final = memoryview(b"")
_AUTHENTICATE: Final = (("www-authenticate", 'Bearer realm="kiln"'),)


def json_response(document: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(status, convert.dumps(document), _JSON_HEADERS)


def error_response(
    status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
) -> HttpResponse:
    retry = (("retry-after", "1"),) if status in (429, 503) else ()
    auth = _AUTHENTICATE if status == 401 else ()
    return HttpResponse(status, error_body(message), (*_JSON_HEADERS, *retry, *auth, *headers))


class HttpApp:
    """Routes KServe v2 REST requests to a `ServingCore`. See the module docstring."""

    def __init__(self, core: ServingCore, settings: ServingSettings) -> None:
        self.core = core
        self.settings = settings
        self._token = f"Bearer {settings.token}".encode() if settings.token else None
        self._protect_inference = settings.token_for_inference
        self._max_json = settings.max_json_bytes

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one request (errors included: this never raises)."""
        received = time.perf_counter_ns()
        try:
            handler, arguments, protected = self._route(request.method, request.path)
            if protected:
                self._authorize(request.headers)
            return await handler(request, received, *arguments)
        except HttpProblem as problem:
            return error_response(problem.status, problem.message, problem.headers)
        except Exception as exc:
            return error_response(*failure(exc, f"{request.method} {request.path[:200]}"))

    # -- routing --------------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> tuple[Handler, tuple[str, ...], bool]:
        """The handler of `method path`, its path arguments, and whether it needs the token
        (`token_for_inference` guards everything but health; load and unload always)."""
        parts = path.strip("/").split("/")
        inference = self._protect_inference
        if parts[0] != "v2":
            raise _unknown(path)
        if len(parts) == 1:
            return self._get(method, self._server_metadata), (), inference
        area, rest = parts[1], parts[2:]
        if area == "health" and rest in (["live"], ["ready"]):
            return self._get(method, self._health), (rest[0],), False
        if area == "repository" and rest == ["index"]:
            return self._post(method, self._index), (), inference
        if area == "repository" and len(rest) == 3 and rest[0] == "models":  # noqa: SIM102
            if rest[2] in ("load", "unload"):
                return self._post(method, self._control), (rest[1], rest[2]), True
        if area == "models" and rest == ["stats"]:
            return self._get(method, self._statistics), ("", ""), inference
        if area == "models" and rest:
            model, rest = rest[0], rest[1:]
            version = ""
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
            action = rest[0] if len(rest) == 1 else "" if not rest else None
            known = _MODEL_ACTIONS.get(action) if action is not None else None
            if known is not None and not (version and action == "feedback"):
                verb, name = known
                handler = getattr(self, name)
                checked = (
                    self._get(method, handler) if verb == "GET" else self._post(method, handler)
                )
                return checked, ((model, version) if action != "feedback" else (model,)), inference
        raise _unknown(path)

    @staticmethod
    def _get(method: str, handler: Handler) -> Handler:
        if method not in ("GET", "HEAD"):
            raise HttpProblem(405, f"use GET here, not {method[:10]}", (("allow", "GET, HEAD"),))
        return handler

    @staticmethod
    def _post(method: str, handler: Handler) -> Handler:
        if method != "POST":
            raise HttpProblem(405, f"use POST here, not {method[:10]}", (("allow", "POST"),))
        return handler

    def _authorize(self, headers: Mapping[str, str]) -> None:
        if self._token is None:
            return
        given = headers.get("authorization")
        if given is None:
            why = "this request needs an `Authorization: Bearer TOKEN` header"
        elif hmac.compare_digest(given.encode(errors="replace"), self._token):
            return
        else:
            why = "the bearer token is wrong"
        raise NotAuthenticated(f"{why}; use the token the server was started with")

    # -- health and metadata --------------------------------------------------------------------

    async def _health(self, request: HttpRequest, received: int, which: str) -> HttpResponse:
        if self.core.live if which == "live" else self.core.ready:
            return _EMPTY_OK
        return error_response(503, f"the server is not {which}")

    async def _server_metadata(self, request: HttpRequest, received: int) -> HttpResponse:
        return json_response(documents.server_metadata())

    async def _model_ready(
        self, request: HttpRequest, received: int, model: str, version: str
    ) -> HttpResponse:
        if self.core.model_ready(model, version):
            return _EMPTY_OK
        which = f"{quote(model)} version {quote(version)}" if version else quote(model)
        return error_response(
            503, f"model {which} is not ready (GET /v2/repository/index says why)"
        )

    async def _model_metadata(
        self, request: HttpRequest, received: int, model: str, version: str
    ) -> HttpResponse:
        return json_response(documents.model_metadata(self.core.describe(model, version)))

    async def _config(
        self, request: HttpRequest, received: int, model: str, version: str
    ) -> HttpResponse:
        return json_response(documents.model_config(self.core.describe(model, version)))

    async def _statistics(
        self, request: HttpRequest, received: int, model: str, version: str
    ) -> HttpResponse:
        return json_response(documents.model_statistics(self.core.statistics(model, version)))

    # -- repository -----------------------------------------------------------------------------

    async def _index(self, request: HttpRequest, received: int) -> HttpResponse:
        document = self._document(request, "repository index request", optional=True) or {}
        ready = document.get("ready", False) if isinstance(document, dict) else None
        if not isinstance(ready, bool):
            raise InferRequestInvalid('the index request is {"ready": true|false} or empty')
        return json_response(documents.repository_index(await self.core.repository_index(ready)))

    async def _control(
        self, request: HttpRequest, received: int, model: str, action: str
    ) -> HttpResponse:
        document = self._document(request, f"{action} request", optional=True) or {}
        parameters = document.get("parameters", {}) if isinstance(document, dict) else None
        if not isinstance(parameters, dict):
            raise InferRequestInvalid(
                f'the {action} request is {{"parameters": {{...}}}} or empty, got {document!r:.60}'
            )
        reference = repository_reference(model, parameters)
        if action == "load":
            await self.core.load(reference)
        else:
            await self.core.unload(reference)
        return _EMPTY_OK

    # -- inference and feedback -----------------------------------------------------------------

    async def _infer(
        self, request: HttpRequest, received: int, model: str, version: str
    ) -> HttpResponse:
        body = request.body
        self._check_type(request.headers)
        length = convert.header_length(request.headers, len(body))
        view = memoryview(body)
        head = view if length is None else view[:length]
        binary = _NO_BINARY if length is None else view[length:]
        if len(head) > self._max_json:
            raise HttpProblem(413, _json_too_large(len(head), self._max_json))
        document = convert.parse_json(head, "request's JSON")
        infer_request, plan = convert.infer_request(document, binary, model, version, received)
        response = await self.core.infer(infer_request)
        content, header = convert.infer_response(response, plan)
        if header is None:
            return HttpResponse(200, content, _JSON_HEADERS)
        headers = (("content-type", OCTET_STREAM), (convert.HEADER_LENGTH, str(header)))
        return HttpResponse(200, content, headers)

    async def _feedback(self, request: HttpRequest, received: int, model: str) -> HttpResponse:
        document = self._document(request, "feedback")
        now = time.time_ns()
        if not (isinstance(document, dict) and "items" in document):
            item = _feedback_item("the feedback", document, model, now)
            rejected = [(0, item)] if isinstance(item, str) else self.core.feedback([item])
            if rejected:
                raise FeedbackRejected(f"feedback rejected: {rejected[0][1]}")
            return json_response({"accepted": 1, "rejected": []})
        items = document["items"]
        if not isinstance(items, list):
            raise FeedbackRejected('`items` must be a list of {"request_id", "label"} objects')
        # An item that is not even well-formed is refused alone, as the core refuses an item
        # with a label out of range: the other items are still taken.
        parsed = [_feedback_item(f"items[{i}]", item, model, now) for i, item in enumerate(items)]
        malformed = [(i, p) for i, p in enumerate(parsed) if isinstance(p, str)]
        kept = [(i, p) for i, p in enumerate(parsed) if not isinstance(p, str)]
        refused = self.core.feedback([p for _, p in kept]) if kept else []
        rejected = sorted(malformed + [(kept[j][0], reason) for j, reason in refused])
        return json_response(
            {
                "accepted": len(items) - len(rejected),
                "rejected": [{"index": i, "reason": r} for i, r in rejected],
            }
        )

    def _document(self, request: HttpRequest, what: str, *, optional: bool = False) -> Any:
        """A JSON request body (None for an empty one when `optional`)."""
        if not request.body.strip() and optional:
            return None
        self._check_type(request.headers)
        if len(request.body) > self._max_json:
            raise HttpProblem(413, _json_too_large(len(request.body), self._max_json))
        return convert.parse_json(request.body, f"{what} body")

    @staticmethod
    def _check_type(headers: Mapping[str, str]) -> None:
        declared = headers.get("content-type", "")
        media = declared.split(";", 1)[0].strip().lower()
        if media not in ACCEPTED_BODY_TYPES:
            raise HttpProblem(
                415,
                f"content type {quote(media[:60])} is not taken here: send application/json "
                "(or application/octet-stream with the binary tensor extension)",
            )


def _unknown(path: str) -> HttpProblem:
    return HttpProblem(
        404,
        f"no endpoint {quote(path[:120])}: the KServe v2 paths are /v2, /v2/health/live|ready, "
        "/v2/models/NAME[/versions/V][/ready|/infer|/config|/stats], /v2/repository/index, "
        "/v2/repository/models/NAME/load|unload and /v2/models/NAME/feedback",
    )


def _json_too_large(size: int, limit: int) -> str:
    return (
        f"the request's JSON is {size} bytes; at most {limit} are parsed (JSON parsing holds "
        "the server's event loop): send large tensors as binary data (Triton's binary tensor "
        "extension, tritonclient.http's default), or raise --max-json-size"
    )


def _feedback_item(where: str, item: Any, model: str, now: int) -> Feedback | str:
    """One feedback item, or why it cannot be one."""
    if not isinstance(item, dict):
        return f'{where} must be an object {{"request_id": ..., "label": ...}}'
    request_id = item.get("request_id")
    label = item.get("label")
    value = item.get("value")
    if not isinstance(request_id, str) or not convert.is_text(request_id):
        return f"{where}: `request_id` must be the string id of a response"
    if label is not None and (not isinstance(label, int) or isinstance(label, bool)):
        return f"{where}: `label` must be an integer class index"
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
        return f"{where}: `value` must be a number"
    number = None if value is None else float(value)
    return Feedback(request_id, label, model, now, number, convert.TRANSPORT)
