"""The HTTP API (``visprog api``): FastAPI over :class:`~visprog.apps.api_service.ApiService`.

Endpoints: ``POST /v1/<verb>`` for each task (``ask``, ``verify``, ``edit``, ``tag``: the tasks' files say
which), ``POST /v1/run`` (a program), ``POST /v1/check`` (diagnostics only), ``GET /v1/modules``,
``GET /healthz`` and ``GET /readyz``. A POST body is JSON (images as base64 by input name) or
``multipart/form-data`` (images as files named by input: ``IMAGE``, ``LEFT``, ``RIGHT``). With
``Accept: text/event-stream`` the response is a stream of the planner's, the interpreter's and the models'
events as they happen (``event: <kind>``, ``data: <the event as JSON>``), ending with ``event: result``
(the response body) or ``event: error`` (an error body).

Every response other than a 200 is an :class:`~visprog.apps.api_models.ErrorResponse` with a stable code; a
client's mistake is a 4xx, never a 500. The OpenAPI schema (``/openapi.json``) names every request and response
model, for both body types. Runs of concurrent requests share batched module calls (the service's batcher).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from visprog import __version__
from visprog.apps import api_models as models
from visprog.apps.api_service import ApiError, ApiService, ApiSettings, decode_base64, error_info, response_data
from visprog.apps.run_output import RunReport
from visprog.errors import VisprogError
from visprog.planner.tasks import Task, input_names, tasks
from visprog.running.events import Event, Listener

if TYPE_CHECKING:
    from visprog.language.signatures import Registry
    from visprog.planner.core import Planner
    from visprog.running.runtime import Runtime

__all__ = ["create_app"]

log = logging.getLogger(__name__)

#: The paths the API itself uses under /v1: a task whose verb is one of these gets no endpoint.
RESERVED = frozenset({"run", "check", "modules"})

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": models.ErrorResponse, "description": what}
    for code, what in {
        400: "the body is not valid JSON or multipart",
        401: "no bearer token, or a wrong one",
        413: "an image or the body is over the size limit",
        415: "the body is neither JSON nor multipart/form-data",
        422: "a field, an image or the program is wrong",
        429: "too many requests at once (see Retry-After)",
        502: "the LLM service failed",
        503: "planning is not configured",
        504: "the request took longer than the server's timeout",
    }.items()
}


def create_app(
    settings: ApiSettings | None = None,
    *,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    planner_factory: Callable[[], Planner] | None = None,
) -> FastAPI:
    """The API as an ASGI app (serve it with uvicorn). ``planner_factory`` makes the planner on first use
    (default :func:`visprog.solving.create_planner`); the runs use ``registry`` and ``runtime``."""
    settings = settings or ApiSettings()
    service = ApiService(settings, registry=registry, runtime=runtime, planner_factory=planner_factory)
    executor = ThreadPoolExecutor(settings.max_concurrent + settings.max_queue, thread_name_prefix="visprog-api")
    inputs_at_most = max((len(t.inputs) for t in tasks().values()), default=2)
    max_body = math.ceil(settings.max_upload_bytes * max(inputs_at_most, 2) * 4 / 3) + 1_000_000

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="visprog",
        version=__version__,
        description="Plan and run visual programs on images. Errors are JSON with a stable `code`.",
        lifespan=lifespan,
    )
    app.state.service = service
    bearer = HTTPBearer(auto_error=False, description="the server's token (--token / VISPROG_API_TOKEN)")

    def authorize(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:  # noqa: B008
        if settings.token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), settings.token.encode()):
            what = "a wrong bearer token" if credentials is not None else "no bearer token"
            raise ApiError(
                401,
                "unauthorized",
                f"{what}: send the header 'Authorization: Bearer TOKEN' with the server's token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    _add_error_handlers(app)

    async def parse(request: Request, model: type[BaseModel], images: bool) -> tuple[Any, dict[str, bytes]]:
        return await _parse(request, model, images, max_body, settings.max_upload_bytes)

    async def serve(request: Request, work: Callable[[Listener | None, float], RunReport], with_trace: bool) -> Any:
        """Run ``work`` on a thread, once the gate admits it: as JSON, or as an event stream."""
        service.gate.enter()
        loop = asyncio.get_running_loop()

        def in_thread(listener: Listener | None) -> dict[str, Any]:
            try:
                with service.gate.slot() as waited:
                    hearing = service.runtime.listening(listener) if listener else contextlib.nullcontext()
                    with hearing:
                        return response_data(work(listener, waited), with_trace=with_trace)
            finally:
                service.gate.leave()

        if "text/event-stream" not in request.headers.get("accept", ""):
            future = loop.run_in_executor(executor, in_thread, None)
            try:
                return JSONResponse(await asyncio.wait_for(future, settings.timeout))
            except TimeoutError:
                raise _timeout(settings.timeout) from None
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(kind: str, item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, item))

        def streamed() -> None:
            try:
                put("result", in_thread(lambda event: put("event", event)))
            except Exception as e:
                put("error", _as_api_error(e))

        loop.run_in_executor(executor, streamed)
        return StreamingResponse(_events(queue, loop.time() + settings.timeout, settings.timeout), media_type=_SSE)

    for task in tasks().values():
        if task.command in RESERVED or not task.inputs:
            continue
        app.post(
            f"/v1/{task.command}",
            response_model=models.RunResponse,
            responses=_ERRORS,
            summary=task.description or f"the {task.name} task",
            description=f"Plan a program for the {task.input_label.lower()} with the {task.name} task, run it on "
            f"{', '.join(task.inputs)}, answer ({task.answer}). " + _BODY_HELP,
            operation_id=task.command,
            openapi_extra=_request_body("TaskRequest", task.inputs),
            dependencies=[Security(authorize)],
            tags=["tasks"],
        )(_task_endpoint(task, service, parse, serve))

    @app.post(
        "/v1/run",
        response_model=models.RunResponse,
        responses=_ERRORS,
        summary="run a program on images",
        description="Check the program and run it; a failing step gives ok=false with the error. " + _BODY_HELP,
        operation_id="run",
        openapi_extra=_request_body("RunRequest", input_names()),
        dependencies=[Security(authorize)],
        tags=["programs"],
    )
    async def run(request: Request) -> Any:
        body, raw = await parse(request, models.RunRequest, True)
        loaded = service.load_images(raw, None)
        checked = service.check_program(body.program, loaded)
        return await serve(request, lambda listener, waited: service.run(checked, loaded, listener, waited), body.trace)

    @app.post(
        "/v1/check",
        response_model=models.CheckResponse,
        responses=_ERRORS,
        summary="check a program: every problem, with line and column",
        description="Nothing runs and no image is needed; ok=false when the program cannot run.",
        operation_id="check",
        openapi_extra=_request_body("CheckRequest", ()),
        dependencies=[Security(authorize)],
        tags=["programs"],
    )
    async def check(request: Request) -> Any:
        body, _ = await parse(request, models.CheckRequest, False)
        return JSONResponse(service.diagnose(body.program, body.inputs))

    @app.get(
        "/v1/modules",
        response_model=list[models.ModuleInfo],
        summary="the registered modules",
        operation_id="modules",
        dependencies=[Security(authorize)],
        tags=["programs"],
    )
    async def list_modules() -> Any:
        return JSONResponse(service.modules())

    @app.get("/healthz", response_model=models.Health, summary="the server is up", tags=["health"])
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=models.Readiness,
        responses={503: {"model": models.Readiness, "description": "not ready"}},
        summary="the server takes requests",
        tags=["health"],
    )
    async def readyz() -> Any:
        running, queued = service.gate.load
        ready = service.batcher.alive and running + queued < settings.max_concurrent + settings.max_queue
        data = {
            "ready": ready,
            "running": running,
            "queued": queued,
            "max_concurrent": settings.max_concurrent,
            "max_queue": settings.max_queue,
        }
        return JSONResponse(data, status_code=200 if ready else 503)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


_SSE = "text/event-stream"
_BODY_HELP = (
    "The body is JSON (images as base64 by input name) or multipart/form-data (images as files named by input); "
    "with 'Accept: text/event-stream' the response streams the events, then the result."
)


def _task_endpoint(task: Task, service: ApiService, parse: Any, serve: Any) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Any:
        body, raw = await parse(request, models.TaskRequest, True)
        loaded = service.load_images(raw, task.inputs)
        text, samples, temperature = body.text, body.samples, body.temperature

        def work(listener: Listener | None, waited: float) -> RunReport:
            return service.solve(
                task, text, loaded, samples=samples, temperature=temperature, listener=listener, waited=waited
            )

        return await serve(request, work, body.trace)

    endpoint.__name__ = f"task_{task.command}"
    return endpoint


async def _events(queue: asyncio.Queue[tuple[str, Any]], deadline: float, timeout: float) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    while True:
        try:
            kind, item = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            yield _sse("error", _error_body(_timeout(timeout)))
            return
        if kind == "event":
            assert isinstance(item, Event)
            yield _sse(item.kind, item.to_dict())
        elif kind == "result":
            yield _sse("result", item)
            return
        else:
            yield _sse("error", _error_body(item))
            return


def _sse(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def _timeout(seconds: float) -> ApiError:
    return ApiError(504, "timeout", f"the request did not finish within the server's timeout of {seconds:g} s")


def _as_api_error(e: Exception) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, VisprogError):
        info = error_info(e)
        return ApiError(422, info.pop("code"), info.pop("message"), **info)
    log.exception("an API request failed")
    return ApiError(500, "internal", f"the server failed: {type(e).__name__}: {e}")


def _error_body(e: ApiError) -> dict[str, Any]:
    body = e.body()
    body["error"]["status"] = e.status
    return body


def _error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(_error_body(e), status_code=e.status, headers=e.headers)


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, e: Exception) -> JSONResponse:
        return _error_response(_as_api_error(e))

    async def http_error(request: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "invalid_request")
        return _error_response(ApiError(e.status_code, code, str(e.detail), headers=e.headers))

    async def validation_error(request: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, RequestValidationError)
        return _error_response(_invalid(e.errors()))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(VisprogError, api_error)
    app.add_exception_handler(Exception, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def _invalid(errors: Any) -> ApiError:
    problems, fields = [], []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        fields.append(where)
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return ApiError(422, "invalid_request", "the request is not valid: " + "; ".join(problems), fields=fields)


async def _parse(
    request: Request, model: type[BaseModel], images: bool, max_body: int, max_image: int
) -> tuple[Any, dict[str, bytes]]:
    """The request's fields as ``model`` and its images' bytes by name, from JSON or multipart."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("application/json", "multipart/form-data"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the body is {kind or 'of no declared type'}: send application/json"
            + (" or multipart/form-data (images as file fields)" if images else ""),
        )
    body = await _read(request, max_body)
    if kind == "application/json":
        try:
            data = json.loads(body)
        except ValueError as e:
            raise ApiError(400, "bad_json", f"the body is not valid JSON: {e}") from None
        parsed = _validate(model, data)
        images_of = getattr(parsed, "images", {})
        return parsed, {name: decode_base64(name, value, max_image) for name, value in images_of.items()}
    replay: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return replay.pop() if replay else {"type": "http.disconnect"}

    try:
        form = await Request(request.scope, receive).form(max_files=8, max_fields=32, max_part_size=max_body)
    except Exception as e:  # python-multipart's and Starlette's parse errors
        raise ApiError(400, "bad_multipart", f"the multipart body cannot be read: {getattr(e, 'detail', e)}") from None
    names = {name.upper() for name in input_names()}
    fields: dict[str, Any] = {}
    raw: dict[str, bytes] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if not images:
                raise ApiError(422, "invalid_request", f"'{key}': this endpoint takes no files")
            raw[key] = await value.read()
        elif images and key.upper() in names:
            raw[key] = decode_base64(key, value, max_image)
        else:
            fields[key] = value
    return _validate(model, fields), raw


def _validate(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _invalid(e.errors()) from None


async def _read(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ApiError(413, "upload_too_large", f"the body is {int(length):,} bytes, over the limit of {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "upload_too_large", f"the body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _request_body(model: str, image_inputs: Any) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a POST: the JSON model, and the multipart form with a file per input."""
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}
    schema = getattr(models, model).model_json_schema()
    properties = {k: v for k, v in schema["properties"].items() if k != "images"}
    for name in image_inputs:
        properties[name] = {"type": "string", "format": "binary", "description": f"the {name} image file"}
    form = {"type": "object", "properties": properties, "required": schema.get("required", [])}
    content["multipart/form-data"] = {"schema": form}
    return {"requestBody": {"required": True, "content": content}}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, plus the request models the POST bodies name (parsed by hand: JSON or multipart)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (models.TaskRequest, models.RunRequest, models.CheckRequest):
            data = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(data.pop("$defs", {}))
            components[model.__name__] = data
        app.openapi_schema = schema
    return app.openapi_schema
