"""The HTTP API's work, without HTTP: read images, plan and run through one shared batcher, check, list.

:class:`ApiService` holds the interpreter, the :class:`~visprog.running.batcher.Batcher` every request's runs
go through (so concurrent requests share batched module calls), the planner (made on first use) and the
:class:`Gate` that bounds how many requests are served at once. Planning happens on the request's own
thread, outside the batcher: a slow LLM reply holds up no other request's run. Every error a client can
cause is an :class:`ApiError` with an HTTP status and a stable code; :mod:`visprog.apps.api` turns it into JSON.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from visprog.apps.console import diagnostic_data
from visprog.apps.run_output import RunReport, json_value
from visprog.errors import (
    ConfigError,
    ImageError,
    ProgramError,
    ServiceError,
    StepError,
    VisprogError,
)
from visprog.language.checker import CheckedProgram, check
from visprog.language.signatures import Registry
from visprog.language.values import Image, Type, type_of_value
from visprog.llm.masking import mask_secrets
from visprog.planner.core import Plan, PlanningError
from visprog.planner.tasks import Task, input_names
from visprog.running.batcher import DEFAULT_WINDOW, Batcher
from visprog.running.events import Listener
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Runtime
from visprog.running.tracing import Trace
from visprog.solving import vote_runs

if TYPE_CHECKING:
    from visprog.planner.core import Planner

__all__ = ["ApiError", "ApiService", "ApiSettings", "Gate", "decode_base64", "error_info", "response_data"]


@dataclass(frozen=True)
class ApiSettings:
    """The server's limits. ``token``: the bearer token every ``/v1`` request must carry (None: none needed)."""

    token: str | None = None
    window: float = DEFAULT_WINDOW  # seconds an idle batcher waits for more programs
    max_batch: int | None = None  # largest batched module call
    max_concurrent: int = 16  # requests served at once
    max_queue: int = 64  # requests waiting for a slot; beyond: 429
    timeout: float = 300.0  # seconds per request
    max_upload_bytes: int = 20_000_000  # per image
    max_pixels: int | None = None  # per image (default: load_image's)

    def __post_init__(self) -> None:
        for name in ("max_concurrent", "max_upload_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queue < 0 or self.window < 0 or self.timeout <= 0:
            raise ConfigError("max_queue and window must be 0 or more, and timeout more than 0")


class ApiError(Exception):
    """A request that cannot be served: ``status``, a stable ``code``, the message and more fields."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


def error_info(error: VisprogError) -> dict[str, Any]:
    """``error`` as the API's ``ErrorInfo``: its stable code, message, and a program's diagnostics or a step's place."""
    data: dict[str, Any] = {"code": _code(error), "message": mask_secrets(str(error)), "type": type(error).__name__}
    if isinstance(error, StepError):
        data.update(line=error.line, module=error.module, target=error.target, reason=error.reason)
    if isinstance(error, ProgramError):
        data["diagnostics"] = [diagnostic_data(d, "error") for d in error.diagnostics]
    return data


def _code(error: VisprogError) -> str:
    if isinstance(error, StepError):
        return "step_failed"
    if isinstance(error, PlanningError):
        return "planning_failed"
    if isinstance(error, ProgramError):
        return "invalid_program"
    if isinstance(error, ServiceError):
        return "llm_unavailable"
    if isinstance(error, ConfigError):
        return "not_configured"
    return "invalid_request"


def _raise_for(error: VisprogError) -> None:
    """The HTTP error of a failure that is not a run's outcome: the LLM service, the configuration, a program."""
    if isinstance(error, ServiceError):
        raise ApiError(502, "llm_unavailable", str(error)) from error
    if isinstance(error, ConfigError):
        raise ApiError(503, "not_configured", str(error)) from error
    if isinstance(error, ProgramError):
        extra = {k: v for k, v in error_info(error).items() if k not in ("code", "message")}
        raise ApiError(422, "invalid_program", str(error), **extra)
    if isinstance(error, ImageError):
        raise ApiError(422, "not_an_image", str(error)) from error


class Gate:
    """At most ``max_concurrent`` requests served at once and ``max_queue`` waiting; beyond, :meth:`enter` refuses."""

    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self.max_concurrent, self.max_queue = max_concurrent, max_queue
        self._slots = threading.Semaphore(max_concurrent)
        self._lock = threading.Lock()
        self.admitted = 0
        self._seconds = 1.0  # a running mean of how long a request holds its slot

    def enter(self) -> None:
        """Admit a request, or raise 429 with ``Retry-After`` when every slot and queue place is taken."""
        with self._lock:
            if self.admitted >= self.max_concurrent + self.max_queue:
                retry = max(1, math.ceil(self._seconds * (1 + self.max_queue / self.max_concurrent)))
                raise ApiError(
                    429,
                    "busy",
                    f"the server is busy: {self.max_concurrent} requests are being served and {self.max_queue} "
                    f"wait; try again in {retry} s",
                    headers={"Retry-After": str(retry)},
                )
            self.admitted += 1

    @contextlib.contextmanager
    def slot(self) -> Iterator[float]:
        """Wait for a slot (yields the seconds waited), hold it, then leave (the request admitted by :meth:`enter`)."""
        t0 = time.perf_counter()
        self._slots.acquire()
        waited = time.perf_counter() - t0
        try:
            yield waited
        finally:
            self._slots.release()
            with self._lock:
                self._seconds = 0.8 * self._seconds + 0.2 * (time.perf_counter() - t0 - waited)

    def leave(self) -> None:
        with self._lock:
            self.admitted -= 1

    @property
    def load(self) -> tuple[int, int]:
        """(requests being served, requests waiting)."""
        with self._lock:
            admitted = self.admitted
        return min(admitted, self.max_concurrent), max(0, admitted - self.max_concurrent)


_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_DATA_URL = re.compile(r"^data:[^,]*;base64,", re.IGNORECASE)


def decode_base64(name: str, value: str, limit: int) -> bytes:
    """The bytes of ``images.<name>``: base64 (a ``data:`` URL prefix allowed); a URL is refused, never fetched."""
    if _URL.match(value.strip()):
        raise ApiError(
            422,
            "url_not_allowed",
            f"images.{name}: this server does not fetch URLs; send the image's bytes (base64 in JSON, or a "
            "multipart upload)",
        )
    text = _DATA_URL.sub("", value.strip(), count=1)
    if len(text) * 3 // 4 > limit + 3:
        raise ApiError(413, "upload_too_large", f"images.{name}: the image is over the limit of {limit:,} bytes")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "bad_base64", f"images.{name}: not valid base64") from None


class ApiService:
    """The server's state: one interpreter and batcher, the planner (made on first use), the gate."""

    def __init__(
        self,
        settings: ApiSettings,
        *,
        registry: Registry | None = None,
        runtime: Runtime | None = None,
        planner_factory: Callable[[], Planner] | None = None,
    ) -> None:
        self.settings = settings
        self.interpreter = Interpreter(registry, runtime, max_batch=settings.max_batch, known_inputs=input_names())
        self.registry = self.interpreter.registry
        self.runtime = self.interpreter.runtime
        self.batcher = Batcher(self.interpreter, window=settings.window)
        self.gate = Gate(settings.max_concurrent, settings.max_queue)
        self._planner_factory = planner_factory
        self._planner: Planner | None = None
        self._planner_lock = threading.Lock()

    def planner(self) -> Planner:
        """The planner, made on first use (once); 503 ``not_configured`` when it cannot be made."""
        with self._planner_lock:
            if self._planner is None:
                if self._planner_factory is None:
                    from visprog.solving import create_planner

                    self._planner_factory = lambda: create_planner(registry=self.registry)
                try:
                    self._planner = self._planner_factory()
                except ConfigError as e:
                    raise ApiError(503, "not_configured", f"planning is not available: {e}") from e
            return self._planner

    def load_images(self, raw: Mapping[str, bytes], wanted: Sequence[str] | None) -> dict[str, Image]:
        """Decode the uploaded files (``{"IMAGE": bytes}``) as RGB images; ``wanted``: the task's inputs, all needed."""
        from visprog.running.images import load_image

        known = list(wanted) if wanted is not None else list(input_names())
        by_upper = {name.upper(): name for name in known}
        images: dict[str, Image] = {}
        for given, data in raw.items():
            name = by_upper.get(given.upper())
            if name is None:
                raise ApiError(
                    422,
                    "unknown_input",
                    f"image '{given}': not an input of this request (its inputs: {', '.join(known)})",
                )
            if len(data) > self.settings.max_upload_bytes:
                raise ApiError(
                    413,
                    "upload_too_large",
                    f"{name}: the image is {len(data):,} bytes, over the limit of {self.settings.max_upload_bytes:,}",
                )
            try:
                images[name] = load_image(data, max_pixels=self.settings.max_pixels, name=name)
            except ImageError as e:
                too_many = "pixels" in str(e) and "limit" in str(e)
                raise ApiError(422, "too_many_pixels" if too_many else "not_an_image", str(e)) from e
        missing = [name for name in wanted or () if name not in images]
        if missing:
            raise ApiError(
                422,
                "missing_image",
                f"no image was given for {', '.join(missing)} (this task reads {', '.join(known)}): send each as "
                "images.NAME in JSON, or as a multipart file field NAME",
            )
        return images

    def check_program(self, program: str, images: Mapping[str, Any]) -> CheckedProgram:
        """``program`` checked against the given images; 422 ``invalid_program`` with its diagnostics if it fails."""
        try:
            return check(
                program,
                {k: type_of_value(v) for k, v in images.items()},
                registry=self.registry,
                known_inputs=input_names(),
            )
        except ProgramError as e:
            _raise_for(e)
            raise

    def diagnose(self, program: str, inputs: Sequence[str] | None) -> dict[str, Any]:
        """``/v1/check``: the program's diagnostics, and what it reads and gives."""
        given = {name: Type.IMAGE for name in inputs} if inputs is not None else None
        try:
            checked = check(program, given, registry=self.registry, known_inputs=input_names())
        except ProgramError as e:
            return {"ok": False, "kind": e.kind, "diagnostics": [diagnostic_data(d, "error") for d in e.diagnostics]}
        result = checked.steps[checked.result]
        return {
            "ok": True,
            "diagnostics": [diagnostic_data(d, "warning") for d in checked.warnings],
            "steps": len(checked.steps),
            "inputs": list(checked.used_inputs),
            "result": {"name": result.step.target, "type": str(result.type)},
        }

    def run(
        self, checked: CheckedProgram, images: Mapping[str, Any], listener: Listener | None, waited: float
    ) -> RunReport:
        """``/v1/run``: the program through the batcher; a failing step is the report's error."""
        t0 = time.perf_counter()
        report = RunReport("run", program=checked.source)
        try:
            report.trace = self.batcher.run(checked, images, on_event=listener)
        except StepError as e:
            report.error, report.trace = e, e.trace
        report.timings = {"plan": None, "queue": waited, "run": _run_seconds(report.trace), "total": 0.0}
        report.timings["total"] = waited + time.perf_counter() - t0
        return report

    def solve(
        self,
        task: Task,
        text: str,
        images: Mapping[str, Any],
        *,
        samples: int,
        temperature: float | None,
        listener: Listener | None,
        waited: float,
    ) -> RunReport:
        """A task's endpoint: plan here (``samples`` programs), run the valid ones through the batcher, vote.

        As :func:`visprog.solving.solve` does, the answer is the one most valid runs share; when none ran to
        the end, the last sample's error is the report's (a planning failure, or a step's with its trace).
        """
        t0 = time.perf_counter()
        planner = self.planner()
        report = RunReport(task.command, task=task.name, text=text)
        try:
            plans = planner.plan_samples(task, text, samples, temperature=temperature, images=images, on_event=listener)
        except VisprogError as e:
            _raise_for(e)
            raise
        planned = time.perf_counter()
        valid = [p for p in plans if isinstance(p, Plan)]
        runs = self.batcher.run_many([(p.checked, images) for p in valid], on_event=listener) if valid else []
        good = [(p, t) for p, t in zip(valid, runs, strict=True) if isinstance(t, Trace)]
        report.samples = {"drawn": samples, "valid": len(valid)}
        if good:
            trace, report.agreement = vote_runs([t for _, t in good], samples=len(plans), on_event=listener)
            report.trace, report.program = trace, next(p for p, t in good if t is trace).program
        elif runs:  # every valid program failed: the last one's error
            last = runs[-1]
            assert isinstance(last, VisprogError)
            report.error, report.trace, report.program = last, getattr(last, "trace", None), valid[-1].program
        else:
            last_plan = plans[-1]
            assert isinstance(last_plan, VisprogError)
            _raise_for(last_plan)  # the LLM service failed
            report.error = last_plan
        report.timings = {
            "plan": planned - t0,
            "queue": waited,
            "run": _run_seconds(report.trace),
            "total": waited + time.perf_counter() - t0,
        }
        return report

    def modules(self) -> list[dict[str, Any]]:
        """``/v1/modules``: each registered module, as ``visprog modules --json`` lists it."""
        return [
            {
                "name": s.name,
                "aliases": list(s.aliases),
                "summary": s.summary,
                "returns": str(s.returns),
                "batch": s.batch is not None,
                "source": s.source,
                "params": [
                    {"name": p.name, "type": str(p.type), "required": p.required, "description": p.description}
                    for p in s.params
                ],
                "options": [
                    {
                        "name": o.name,
                        "type": o.type_name,
                        "default": o.default,
                        "choices": list(o.choices),
                        "help": o.help,
                    }
                    for o in s.options
                ],
            }
            for s in self.registry
        ]

    def close(self) -> None:
        self.batcher.close(timeout=5)


def _run_seconds(trace: Trace | None) -> float | None:
    return trace.seconds if trace is not None else None


def response_data(report: RunReport, *, with_trace: bool) -> dict[str, Any]:
    """A :class:`~visprog.apps.api_models.RunResponse`: the report's ``--json`` shape, the error with its code,
    the result's type and an image result as base64 PNG."""
    trace = report.trace
    data = report.to_json() if with_trace else replace(report, trace=None).to_json()  # no PNG encoding
    if trace is not None and trace.ok and not with_trace:
        data.update(result=json_value(trace.result), result_var=trace.result_var)
    if report.error is not None:
        data["error"] = error_info(report.error)
    result = trace.result if trace is not None and trace.ok else None
    data["result_type"] = str(type_of_value(result)) if trace is not None and trace.ok else None
    data["result_image"] = _png_base64(result) if isinstance(result, Image) else None
    return data


def _png_base64(image: Image) -> str:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
