"""visprog: visual programming agents.

A program in the VisProg language is parsed, type-checked against the
registered modules, turned into a dependency graph and run step by step, with
a trace of every step. ``import visprog`` imports no torch.

In IPython and Jupyter, ``import visprog`` has a trace display itself inline as
its HTML page (:func:`visprog.presentation.report.trace_fragment`).
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

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

#: The rest of the public API, imported on first use (PEP 562): ``visprog check`` loads no planner.
_LAZY = {
    "parse": "visprog.language.parser",
    "ModuleSpec": "visprog.language.signatures",
    "Option": "visprog.language.signatures",
    "Registry": "visprog.language.signatures",
    "module": "visprog.language.signatures",
    "Detection": "visprog.language.values",
    "Image": "visprog.language.values",
    "Objects": "visprog.language.values",
    "Template": "visprog.language.values",
    "Type": "visprog.language.values",
    "Task": "visprog.planner.tasks",
    "get_task": "visprog.planner.tasks",
    "tasks": "visprog.planner.tasks",
    "default_registry": "visprog.running.plugins",
    "load_plugins": "visprog.running.plugins",
    "Context": "visprog.running.runtime",
    "Runtime": "visprog.running.runtime",
    "Solution": "visprog.solving",
    "ask": "visprog.solving",
    "check": "visprog.solving",
    "create_planner": "visprog.solving",
    "edit": "visprog.solving",
    "run": "visprog.solving",
    "solve": "visprog.solving",
    "tag": "visprog.solving",
    "verify": "visprog.solving",
}

if TYPE_CHECKING:
    from visprog.language.parser import parse
    from visprog.language.signatures import ModuleSpec, Option, Registry, module
    from visprog.language.values import Detection, Image, Objects, Template, Type
    from visprog.planner.tasks import Task, get_task, tasks
    from visprog.running.plugins import default_registry, load_plugins
    from visprog.running.runtime import Context, Runtime
    from visprog.solving import Solution, ask, check, create_planner, edit, run, solve, tag, verify


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'visprog' has no attribute '{name}'")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
