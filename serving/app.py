"""The HTTP API: `create_app(runtime)` builds the FastAPI application over a `serving.runtime.Runtime`.

==========================  ======================================================================
``GET /recommend``          ``?user_id=…&k=10&exclude_seen=true`` -> ``{"user_id", "items": [{"item_id",
                            "score", "fast", "slow", "reason"}], "gate", "cold_start", "model_version",
                            "took_ms"}``. Unknown users get the cold-start list (trending and
                            generally liked items), never an error. ``k`` is 1..100.
``POST /events``            one event object or a list of at most `MAX_BATCH_EVENTS` (body at most
                            `MAX_BODY_BYTES`), validated by `streaming.events.Interaction`, produced
                            to Kafka keyed by user; 202 ``{"accepted", "event_ids", "timestamps"}``
                            once acknowledged. An event without ``timestamp`` gets the time the
                            server received it; ``timestamps`` says per event which was used
                            (``"event"`` or ``"received"``).
``DELETE /users/{user_id}`` forgets the user (`serving.runtime.Runtime.forget_user`); 200 with the
                            counts removed per store.
``GET /healthz``            200 while the process runs.
``GET /readyz``             200 when the broker is reachable and the model loaded, else 503 with
                            the reasons.
``GET /metrics``            Prometheus text (`serving.metrics`).
==========================  ======================================================================

Errors: 422 bodies list every problem as ``{"field", "value", "reason", "message"}`` (plus
``"index"`` for an event of a batch), where ``reason`` says what was expected; 401/403 for a
missing/wrong ``X-API-Key``; 413 for oversized bodies or batches; 503 when Kafka does not
take the events. With an API key configured, ``POST`` and ``DELETE`` need the header
``X-API-Key``; reads never do.

>>> import httpx, tempfile
>>> from models.fastslow import FastSlow
>>> from serving.runtime import Runtime
>>> from serving.server import BackgroundServer
>>> with Runtime(FastSlow(), data_dir=tempfile.mkdtemp()) as runtime, \\
...         BackgroundServer(create_app(runtime)) as server:
...     httpx.get(server.url + "/recommend", params={"user_id": "u1", "k": 0}).json()["detail"][0]["message"]
'k: expected an integer from 1 to 100, got 0'
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

from datetime import datetime, timezone
from typing import Literal

from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from fastslow.errors import FastslowError
from serving.metrics import CONTENT_TYPE
from serving.runtime import Runtime, ServingError
from streaming.event_rules import MAX_EVENT_BYTES, REASON_MISSING, RuleViolation, check_text, show_value
from streaming.events import Interaction, InvalidEventError, validate_event

logger = logging.getLogger(__name__)

MAX_K = 100
MAX_BATCH_EVENTS = 1000
"""Events one ``POST /events`` may carry."""
MAX_BODY_BYTES = 4 * 1024 * 1024
"""Bytes one ``POST /events`` body may have."""
API_KEY_HEADER = "X-API-Key"


TIMESTAMP_DOC = ("When the interaction happened: ISO-8601 with a UTC offset, unix seconds or unix milliseconds. "
                 "Optional: an event without one gets the time the server received it (the response's "
                 "`timestamps` says which was used).")


class EventsAccepted(BaseModel):
    """The 202 answer of ``POST /events`` (for the OpenAPI schema; the handler builds it as JSON)."""

    accepted: int = Field(description="Events produced to Kafka and acknowledged.")
    event_ids: list[str] = Field(description="Their ids, in the order sent (derived when not given).")
    timestamps: list[Literal["event", "received"]] = Field(
        description="Per event, in the order sent: `event` when its own timestamp was kept, `received` when "
                    "it had none and the server's receive time was used.")


def event_body_schema() -> dict[str, Any]:
    """The OpenAPI request body of ``POST /events``: one `Interaction` or a list, ``timestamp`` optional."""
    one = Interaction.model_json_schema()
    one["required"] = [name for name in one.get("required", []) if name != "timestamp"]
    one["properties"]["timestamp"] = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
                                      "title": "Timestamp", "description": TIMESTAMP_DOC}
    body = {"oneOf": [one, {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_BATCH_EVENTS}]}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}


class Problems(FastslowError):
    """One or more field-level problems with a request (`problem` entries): answered with 422."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        self.problems = problems
        super().__init__("; ".join(p["message"] for p in problems))


def problem(field: str, value: Any, reason: str, index: int | None = None) -> dict[str, Any]:
    """One 422 entry: the field, the value it had, what was expected, and all of it in a sentence.

    >>> problem("k", 0, "expected an integer from 1 to 100")["message"]
    'k: expected an integer from 1 to 100, got 0'
    """
    where = field if index is None else f"[{index}].{field}"
    entry = {"field": field, "value": _jsonable(value), "reason": reason,
             "message": f"{where}: {reason}, got {show_value(value)}"}
    if index is not None:
        entry["index"] = index
    return entry


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return show_value(value)


def create_app(runtime: Runtime, api_key: str | None = None) -> FastAPI:
    """The API over ``runtime`` (which the caller starts and stops); ``api_key`` guards writes."""
    app = FastAPI(title="fastslow", summary="Streaming fast/slow recommender", version="1")
    app.state.runtime = runtime
    app.add_middleware(RequestTimer, metrics=runtime.metrics)
    _add_error_handlers(app)

    def authorize(given: str | None) -> None:
        if api_key is None:
            return
        if not given:
            raise HTTPException(401, f"missing {API_KEY_HEADER} header: writes need the server's API key "
                                     "(FASTSLOW_API_KEY)", headers={"WWW-Authenticate": API_KEY_HEADER})
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(403, f"wrong {API_KEY_HEADER}: it does not match the server's API key")

    @app.get("/recommend")
    def recommend(user_id: str = Query(..., description="Whom to recommend for."),
                  k: int = Query(10, description=f"How many items, 1..{MAX_K}."),
                  exclude_seen: bool = Query(True, description="Leave out the user's recent items.")) -> Response:
        if not 1 <= k <= MAX_K:
            raise Problems([problem("k", k, f"expected an integer from 1 to {MAX_K}")])
        body = runtime.recommend(_checked_id("user_id", user_id), k, exclude_seen)
        return Response(json.dumps(body), media_type="application/json")

    @app.post("/events", status_code=202, openapi_extra=event_body_schema(),
              responses={202: {"model": EventsAccepted, "description": "Produced and acknowledged."}})
    async def post_events(request: Request, x_api_key: str | None = Header(None)) -> Response:
        """Accept one event or a batch. ``timestamp`` may be left out: the receive time is used then."""
        authorize(x_api_key)
        received = datetime.now(timezone.utc)
        body = await _read_body(request)

        def accept() -> tuple[list[str], list[str]]:  # on a thread: validating 1,000 events takes milliseconds
            events, sources = _parse_events(body, runtime, received)
            try:
                return runtime.produce(events), sources
            except ServingError as exc:
                raise HTTPException(503, str(exc)) from None

        ids, sources = await _in_thread(accept)
        return JSONResponse({"accepted": len(ids), "event_ids": ids, "timestamps": sources}, status_code=202)

    @app.delete("/users/{user_id}")
    def delete_user(user_id: str, x_api_key: str | None = Header(None)) -> dict[str, Any]:
        authorize(x_api_key)
        return runtime.forget_user(_checked_id("user_id", user_id))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        reasons = runtime.readiness()
        body = {"ready": not reasons, "reasons": reasons, "model_version": runtime.champion_version,
                "worker_assigned": runtime.worker.stats.assigned if runtime.worker is not None else None}
        watcher, popularity, warnings = runtime.watcher, runtime.popularity, []
        if watcher is not None and watcher.last_error is not None:
            warnings.append(f"champion watcher: {watcher.errors} polls failed so far, the last with "
                            f"{watcher.last_error!r} (see the log)")
        if popularity is not None and popularity.error is not None:
            warnings.append(f"popularity reader stopped with {popularity.error!r}: 'trending now' keeps the "
                            f"counts of the {popularity.events} events read before (see the log)")
        if warnings:
            body["warnings"] = warnings
        return JSONResponse(body, status_code=503 if reasons else 200)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)

    return app


def _checked_id(field: str, value: str) -> str:
    try:
        return check_text(value)
    except RuleViolation as exc:
        raise Problems([problem(field, value, str(exc))]) from None


async def _in_thread(function, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(function, *args)


async def _read_body(request: Request) -> bytes:
    """The body, refusing (413) one over `MAX_BODY_BYTES` before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body of {declared} bytes: expected at most {MAX_BODY_BYTES} bytes "
                                 f"(send at most {MAX_BATCH_EVENTS} events per request)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"body over {MAX_BODY_BYTES} bytes: expected at most that "
                                     f"(send at most {MAX_BATCH_EVENTS} events per request)")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_events(body: bytes, runtime: Runtime, received: datetime) -> tuple[list, list[str]]:
    """Validated `Interaction` objects from a JSON object or list, or `Problems` naming each fault;
    with, per event, whether its own timestamp was kept (``"event"``) or ``received`` filled in."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise Problems([problem("(body)", body[:80].decode(errors="replace"), f"expected UTF-8 JSON ({exc})")]) \
            from None
    single = isinstance(data, dict)
    items = [data] if single else data
    if not isinstance(items, list) or not items:
        raise Problems([problem("(body)", data, "expected an event object or a non-empty list of them")])
    if len(items) > MAX_BATCH_EVENTS:
        raise HTTPException(413, f"{len(items)} events: expected at most {MAX_BATCH_EVENTS} per request")
    events, sources, problems = [], [], []
    for n, item in enumerate(items):
        index = None if single else n
        if not isinstance(item, dict):
            problems.append(problem("(event)", item, "expected a JSON object", index))
            continue
        source = "event" if item.get("timestamp") is not None else "received"
        if source == "received":
            item = {**item, "timestamp": received.isoformat()}
        try:
            event = validate_event(item, now=received)
        except InvalidEventError as exc:
            problems.extend(problem(p.field, p.value, p.reason, index) for p in exc.problems)
            continue
        if event.user_id in runtime.deleted:
            problems.append(problem("user_id", event.user_id, "expected a user that was not deleted "
                                    "(DELETE /users/{id} was called for this one)", index))
        elif len(event.to_json_bytes()) > MAX_EVENT_BYTES:
            problems.append(problem("(event)", f"{len(event.to_json_bytes())} bytes",
                                    f"expected at most {MAX_EVENT_BYTES} bytes as JSON", index))
        else:
            events.append(event)
            sources.append(source)
    if problems:
        runtime.metrics.events_rejected.inc(len(items))
        raise Problems(problems)
    return events, sources


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problems)
    async def problems_handler(request: Request, exc: Problems) -> JSONResponse:
        return JSONResponse({"detail": exc.problems}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's own checks (missing or mistyped parameters) in the same shape as ours."""
        found = []
        for err in exc.errors():
            field = str(err["loc"][-1]) if err.get("loc") else "(request)"
            missing = err.get("type") == "missing"
            reason = REASON_MISSING if missing else str(err.get("msg", "invalid")).replace("Input should be",
                                                                                           "expected")
            found.append(problem(field, None if missing else err.get("input"), reason))
        return JSONResponse({"detail": found}, status_code=422)


class RequestTimer:
    """ASGI middleware: request latency into the metrics, by method, route template and status."""

    def __init__(self, app, metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            self.metrics.request_seconds.labels(scope["method"], getattr(route, "path", "(unmatched)"),
                                                str(status[0])).observe(time.perf_counter() - started)
