"""visprog: visual programming agents.

A program in the VisProg language is parsed, type-checked against the
registered modules, turned into a dependency graph and run step by step, with
a trace of every step. ``import visprog`` imports no torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from visprog.errors import (
    Diagnostic,
    EvalError,
    ImageError,
    ModelUnavailableError,
    ProgramCheckError,
    ProgramError,
    ProgramSyntaxError,
    RegistrationError,
    StepError,
    VisprogError,
)
from visprog.language.parser import parse
from visprog.language.signatures import ModuleSpec, Registry, module
from visprog.language.values import Detection, Image, Objects, Template, Type
from visprog.running.plugins import default_registry
from visprog.running.runtime import Context, Runtime
from visprog.solve import ask, check, create_planner, edit, run, solve, tag, verify

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
    "ModelUnavailableError",
    "ModuleSpec",
    "Objects",
    "ProgramCheckError",
    "ProgramError",
    "ProgramSyntaxError",
    "RegistrationError",
    "Registry",
    "Runtime",
    "StepError",
    "Template",
    "Type",
    "VisprogError",
    "__version__",
    "ask",
    "check",
    "create_planner",
    "default_registry",
    "edit",
    "module",
    "parse",
    "run",
    "solve",
    "tag",
    "verify",
]
