"""One hierarchy for every error visprog raises.

Errors a user can cause (a bad program, a bad image, a missing model, an
unreachable service) say *where* and *what was expected*. Program errors carry
:class:`Diagnostic` objects: line, column, the source line and a caret.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# The trace a StepError or ListenerError carries is a visprog.running.tracing.Trace, named here by
# this alias: the bottom layer imports no layer above it, not even for type checking.
_Trace = Any

__all__ = [
    "ConfigError",
    "Diagnostic",
    "EvalError",
    "ImageError",
    "ListenerError",
    "ModelUnavailableError",
    "ProgramCheckError",
    "ProgramError",
    "ProgramSyntaxError",
    "RegistrationError",
    "ServiceError",
    "StepError",
    "TraceFormatError",
    "VisprogError",
    "did_you_mean",
    "suggest",
]


def suggest(name: str, candidates: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The candidate closest to ``name`` (a misspelling), ignoring case if need be; None when none is close."""
    options = list(candidates)
    found = difflib.get_close_matches(name, options, n=1, cutoff=cutoff)
    if not found:
        lower = {c.lower(): c for c in options}
        found = [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=cutoff)]
    return found[0] if found else None


def did_you_mean(name: str, candidates: Iterable[str], *, cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or nothing: the tail of every "unknown ..." message."""
    hint = suggest(name, candidates, cutoff=cutoff)
    return f" (did you mean '{hint}'?)" if hint else ""


class VisprogError(Exception):
    """Base class of every error raised by visprog."""


# One visible character per control character, so the caret stays under its column.
_VISIBLE = {c: 0x2400 + c for c in range(0x20)} | {0x09: 0x20, 0x7F: 0x2421}


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a program, at a 1-based line and column."""

    line: int
    column: int
    message: str
    source_line: str = ""

    def render(self) -> str:
        head = f"line {self.line}, col {self.column}: {self.message}"
        if not self.source_line:
            return head
        caret = " " * (max(self.column, 1) - 1) + "^"
        return f"{head}\n  {self.source_line.translate(_VISIBLE)}\n  {caret}"

    def __str__(self) -> str:
        return self.render()


class ProgramError(VisprogError):
    """A program that cannot run, with every diagnostic found."""

    kind = "program error"

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        if not diagnostics:
            raise ValueError("a ProgramError needs at least one diagnostic")
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        super().__init__(self.render())

    @property
    def line(self) -> int:
        return self.diagnostics[0].line

    @property
    def column(self) -> int:
        return self.diagnostics[0].column

    @property
    def messages(self) -> list[str]:
        """The first line of each diagnostic (``line L, col C: message``)."""
        return [d.render().splitlines()[0] for d in self.diagnostics]

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)


class ProgramSyntaxError(ProgramError):
    """The program text does not follow the VisProg grammar."""

    kind = "syntax error"


class ProgramCheckError(ProgramError):
    """The program parses but is not well formed (modules, arguments, types, names).

    ``missing_inputs``: the inputs (``IMAGE``, ``LEFT``, ...) the program reads but the caller did not give.
    """

    kind = "check error"

    def __init__(self, diagnostics: Sequence[Diagnostic], missing_inputs: Sequence[str] = ()) -> None:
        super().__init__(diagnostics)
        self.missing_inputs: tuple[str, ...] = tuple(missing_inputs)


class RegistrationError(VisprogError):
    """A module declaration is wrong: named module and parameter in the message."""


class ConfigError(VisprogError):
    """A configuration file or option is wrong; the message names it."""


class ServiceError(VisprogError):
    """A remote service (an LLM server) failed or could not be reached; names the URL and model.

    ``per_request``: the failure is about this one request (the server refused it: HTTP 400, 413,
    422, such as a prompt longer than the model's context or a content filter), so other requests
    may well succeed; False (the default) for failures of the service itself (unreachable, timed
    out, key refused, model not found, rate limited after retries, server errors).
    """

    def __init__(self, message: str = "", *, per_request: bool = False) -> None:
        self.per_request = per_request
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:  # keep per_request when pickled (Ray, multiprocessing)
        return (_service_error, (str(self), self.per_request))


def _service_error(message: str, per_request: bool) -> ServiceError:
    return ServiceError(message, per_request=per_request)


class ImageError(VisprogError):
    """An input image could not be used; the message names the file."""


class ModelUnavailableError(VisprogError):
    """A model's weights are not available locally and cannot be fetched."""

    def __init__(self, module: str, model_id: str, reason: str, fetch_command: str) -> None:
        self.module = module
        self.model_id = model_id
        self.fetch_command = fetch_command
        super().__init__(
            f"{module}: model '{model_id}' is not available ({reason}). "
            f"Fetch it on a machine with network access: {fetch_command}"
        )


class EvalError(VisprogError):
    """An Eval expression could not be parsed or evaluated."""

    def __init__(self, message: str, expression: str, column: int | None = None, detail: str | None = None) -> None:
        self.expression = expression
        self.column = column
        self.reason = message
        #: the message without its position, for callers that show the position themselves
        self.detail = detail or message
        super().__init__(f"{message} in expression {expression!r}")


class StepError(VisprogError):
    """A step failed while running. Carries the trace: nothing is lost.

    The run raises the first failing step's error after running every step that does not need that
    step's value; ``trace`` holds them all (the steps that ran before the failure and after it), and
    lists the steps that were not run in ``trace.skipped``. ``reason`` is the step's own message: for
    an exception raised in a module's code, its type, message and where it was raised
    (``ValueError: bad thing (at /path/my_plugin.py:12)``); ``cause`` is the exception itself.
    """

    def __init__(
        self,
        message: str,
        *,
        line: int,
        module: str,
        target: str,
        source_line: str,
        trace: _Trace | None = None,
        cause: BaseException | None = None,
    ) -> None:
        self.line = line
        self.module = module
        self.target = target
        self.source_line = source_line
        self.trace = trace
        self.cause = cause
        self.reason = message
        super().__init__(f"line {line}, {module} (step {target}) failed: {message}\n  {source_line}")

    @property
    def partial_results(self) -> dict[str, Any]:
        """The values the run computed, by variable name: before the failure and, by the steps that did not
        need the failed one, after it."""
        return dict(self.trace.values) if self.trace is not None else {}


class ListenerError(VisprogError):
    """An ``on_event`` listener raised: the run stopped there. Carries the trace so far: nothing is lost.

    ``event`` is the event the listener was handed (an :class:`~visprog.running.events.Event`);
    ``trace`` the trace of the program that event is about, ended at that point (its ``error`` says
    the run was stopped); ``results`` every job's result as far as it got, in job order (for
    ``Interpreter.run_many``; ``[trace]`` for ``Interpreter.run``). The listener's own exception is
    ``cause`` and ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        event: Any,
        trace: _Trace | None = None,
        results: Sequence[Any] = (),
        cause: BaseException | None = None,
    ) -> None:
        self.event = event
        self.trace = trace
        self.results: list[Any] = list(results)
        self.cause = cause
        super().__init__(message)


class TraceFormatError(VisprogError, ValueError):
    """Data read as a trace (``Trace.from_json``) is not one: the message says where and what is wrong."""
