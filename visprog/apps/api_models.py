"""The HTTP API's requests and responses as pydantic models: the OpenAPI schema is made from these.

A run's response has the shape of ``visprog ask --json`` (:class:`~visprog.apps.run_output.RunReport`), plus
the result image as base64 PNG; every error is an :class:`ErrorResponse` with a stable ``code``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CheckRequest",
    "CheckResponse",
    "CheckResult",
    "Diagnostic",
    "ErrorInfo",
    "ErrorResponse",
    "Health",
    "ModuleInfo",
    "ModuleOptionInfo",
    "ModuleParam",
    "Readiness",
    "RunRequest",
    "RunResponse",
    "Samples",
    "TaskRequest",
]

_IMAGES = (
    "the images by input name (IMAGE, or LEFT and RIGHT): each the base64 of an image file (a data: URL prefix "
    "is allowed). URLs are refused: the server fetches nothing."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskRequest(_Strict):
    """A task in natural language: the text and the task's images."""

    text: str = Field(min_length=1, description="the question, statement or instruction")
    images: dict[str, str] = Field(default_factory=dict, description=_IMAGES)
    samples: int = Field(1, ge=1, le=16, description="draw this many programs, run the valid ones, vote")
    temperature: float | None = Field(None, ge=0, le=2, description="the LLM's sampling temperature")
    trace: bool = Field(True, description="include the trace (every step's inputs and output) in the response")


class RunRequest(_Strict):
    """A program and its images."""

    program: str = Field(min_length=1, description="the program text")
    images: dict[str, str] = Field(default_factory=dict, description=_IMAGES)
    trace: bool = Field(True, description="include the trace (every step's inputs and output) in the response")


class CheckRequest(_Strict):
    """A program to check; nothing runs."""

    program: str = Field(min_length=1, description="the program text")
    inputs: list[str] | None = Field(None, description="the inputs the caller passes (default: every task's)")


class Diagnostic(BaseModel):
    """One problem of a program, where it is."""

    line: int
    column: int
    severity: str = Field(description="error or warning")
    message: str
    source: str | None = Field(None, description="the program's line")


class ErrorInfo(BaseModel):
    """What went wrong: ``code`` is stable (clients branch on it), ``message`` is for people."""

    code: str = Field(
        description="bad_json, invalid_request, unsupported_media_type, bad_multipart, bad_base64, url_not_allowed,"
        " not_an_image, too_many_pixels, upload_too_large, missing_image, unknown_input, invalid_program,"
        " planning_failed, step_failed, unauthorized, busy, timeout, llm_unavailable, not_configured,"
        " not_found, method_not_allowed, internal"
    )
    message: str
    type: str | None = Field(None, description="the error's class")
    diagnostics: list[Diagnostic] | None = Field(None, description="a program's problems, with line and column")
    line: int | None = Field(None, description="a failed step's line")
    module: str | None = Field(None, description="a failed step's module")
    target: str | None = Field(None, description="a failed step's variable")
    reason: str | None = Field(None, description="a failed step's own message")
    fields: list[str] | None = Field(None, description="the request fields that are wrong (invalid_request)")
    status: int | None = Field(None, description="the HTTP status (in a stream's last event, where it cannot be sent)")


class ErrorResponse(BaseModel):
    """The body of every response that is not a 200."""

    error: ErrorInfo


class Samples(BaseModel):
    drawn: int
    valid: int


class RunResponse(BaseModel):
    """A run: the program, its answer, the trace and timings; ``ok`` false with ``error`` when it failed.

    The shape of ``visprog COMMAND --json``; ``result`` is the answer as JSON (an image: its description) and
    ``result_image`` an image answer as base64 PNG. ``files`` and ``result_file`` stay empty (the CLI's ``-o``).
    """

    command: str
    ok: bool
    task: str | None = None
    text: str | None = None
    program: str | None = None
    result: Any = Field(None, description="text, a number, a boolean, a list of them, or a value's description")
    result_var: str | None = None
    result_type: str | None = Field(
        None, description="the result's type as programs name it: str, int, float, bool, Image, Objects, ..."
    )
    result_image: str | None = Field(None, description="an image result, as base64 PNG")
    result_file: str | None = None
    agreement: float | None = Field(None, description="share of the valid samples that gave this answer")
    samples: Samples | None = None
    files: list[str] = Field(default_factory=list)
    timings: dict[str, float | None] = Field(description="seconds: plan, queue (waiting to start), run, total")
    error: ErrorInfo | None = None
    trace: dict[str, Any] | None = Field(None, description="the trace's JSON form (images as PNG, see the docs)")


class CheckResult(BaseModel):
    name: str
    type: str


class CheckResponse(BaseModel):
    """A program's diagnostics (``visprog check --format json``); ``ok`` false when it cannot run."""

    ok: bool
    kind: str | None = Field(None, description="syntax error or check error")
    diagnostics: list[Diagnostic]
    steps: int | None = None
    inputs: list[str] | None = None
    result: CheckResult | None = None


class ModuleParam(BaseModel):
    name: str
    type: str
    required: bool
    description: str


class ModuleOptionInfo(BaseModel):
    name: str
    type: str
    default: Any = None
    choices: list[Any] = Field(default_factory=list)
    help: str = ""


class ModuleInfo(BaseModel):
    """A registered module, as ``visprog modules --json`` lists it."""

    name: str
    aliases: list[str]
    summary: str
    returns: str
    batch: bool
    source: str
    params: list[ModuleParam]
    options: list[ModuleOptionInfo]


class Health(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    ready: bool
    running: int = Field(description="requests being served")
    queued: int = Field(description="requests waiting for a slot")
    max_concurrent: int
    max_queue: int
