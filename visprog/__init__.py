"""visprog: visual programming agents.

A program in the VisProg language is parsed, type-checked against the
registered modules, turned into a dependency graph and run step by step, with
a trace of every step. ``import visprog`` imports no torch.

In IPython and Jupyter, ``import visprog`` has a trace display itself inline as
its HTML page (:func:`visprog.presentation.report.trace_fragment`).
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from visprog.errors import (
    Diagnostic,
    EvalError,
    ImageError,
    ListenerError,
    ModelUnavailableError,
    ProgramCheckError,
    ProgramError,
    ProgramSyntaxError,
    RegistrationError,
    StepError,
    TraceFormatError,
    VisprogError,
)
from visprog.language.parser import parse
from visprog.language.signatures import ModuleSpec, Option, Registry, module
from visprog.language.values import Detection, Image, Objects, Template, Type
from visprog.planner.tasks import Task, get_task, tasks
from visprog.running.plugins import default_registry, load_plugins
from visprog.running.runtime import Context, Runtime
from visprog.solve import Solution, ask, check, create_planner, edit, run, solve, tag, verify

try:
    __version__ = version("visprog")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "Context",
    "Detection",
    "Diagnostic",
    "EvalError",
    "Image",
    "ImageError",
    "ListenerError",
    "ModelUnavailableError",
    "ModuleSpec",
    "Objects",
    "Option",
    "ProgramCheckError",
    "ProgramError",
    "ProgramSyntaxError",
    "RegistrationError",
    "Registry",
    "Runtime",
    "Solution",
    "StepError",
    "Task",
    "Template",
    "TraceFormatError",
    "Type",
    "VisprogError",
    "__version__",
    "ask",
    "check",
    "create_planner",
    "default_registry",
    "edit",
    "get_task",
    "load_plugins",
    "module",
    "parse",
    "run",
    "solve",
    "tag",
    "tasks",
    "verify",
]


def _trace_fragment(trace: Any) -> str:
    from visprog.presentation.report import trace_fragment  # on first display: numpy and drawing load then

    return trace_fragment(trace)


def _show_traces_inline() -> None:
    """In a running IPython (a notebook), show a ``Trace`` as its HTML page fragment.

    The formatter is registered by the type's name, so nothing more is imported until a trace is shown.
    """
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)()
    if shell is None:
        return
    try:
        html = shell.display_formatter.formatters["text/html"]
        html.for_type_by_name("visprog.running.tracing", "Trace", _trace_fragment)
    except Exception:  # an unusual shell: traces show as text
        return


_show_traces_inline()
