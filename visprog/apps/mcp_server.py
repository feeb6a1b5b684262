"""The MCP server (``visprog mcp``): visprog's tools for agents, on the official MCP Python SDK.

Six tools:

- ``ask_image``, ``verify_images``, ``edit_image``: natural language in; an LLM plans a program for the task
  whose verb is ``ask``, ``verify`` or ``edit`` and visprog runs it (:func:`visprog.solving.solve_by_verb`);
- ``run_program`` and ``check_program``: the agent writes the program (:func:`visprog.solving.run`,
  :func:`visprog.solving.check`);
- ``list_modules``: the module reference.

The tools' descriptions are rendered from the registry (the module names, and for ``run_program`` the planner's
own module reference, :func:`visprog.planner.prompts.module_reference`) and from the tasks' files (their
descriptions and first examples): a plugin's module shows up in them as it does in the planner's prompts.
Images come in as paths or base64 and go out as MCP image content (:mod:`visprog.apps.mcp_content`); every
error a caller can cause comes back as a tool error (``isError``) with visprog's message.

Runs take turns (one at a time, as in the web app): the models and their caches are shared.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from visprog import __version__
from visprog.apps.console import diagnostic_data
from visprog.apps.mcp_content import IMAGE_HELP, error_result, read_image, trace_result
from visprog.errors import ConfigError, ProgramError, VisprogError
from visprog.language.signatures import ModuleSpec, Registry
from visprog.planner.core import Planner
from visprog.planner.prompts import module_reference
from visprog.planner.tasks import Task, input_names, tasks
from visprog.running.events import Listener
from visprog.running.runtime import Runtime
from visprog.solving import check, run, solve_by_verb

__all__ = ["MAX_SAMPLES", "ToolSettings", "build_server", "tool_descriptions"]

#: The most programs one call may draw (``samples``).
MAX_SAMPLES = 16

_SAMPLES_HELP = (
    "how many programs the LLM draws; the valid ones run and their answers are voted on (default 1; "
    f"at most {MAX_SAMPLES})"
)
_PROGRAM_HELP = "the VisProg program, one step per line, ending in FINAL_RESULT=Result(var=NAME)"

_IMAGES_HELP = f'the program\'s input images by name, e.g. {{"IMAGE": "/photos/cat.jpg"}}; each is {IMAGE_HELP}'

ImageArg = Annotated[str, Field(description=IMAGE_HELP)]
Samples = Annotated[int, Field(ge=1, le=MAX_SAMPLES, description=_SAMPLES_HELP)]


@dataclass
class ToolSettings:
    """What the tools run with: the runtime (modules' backends, models, options), how the planner is made
    (on the first call that plans: run_program and check_program need no LLM), the registry, and the limits."""

    runtime: Runtime | None = None
    planner_factory: Callable[[], Planner] | None = None
    registry: Registry | None = None
    #: read images from paths (a local agent); off, only base64 is taken
    allow_paths: bool = True
    max_pixels: int | None = None
    #: receives the events of the planner and the runs (the server's log on standard error)
    on_event: Listener | None = None


def _verb_tasks() -> dict[str, Task]:
    return {t.command: t for t in tasks().values()}


def _module_names(registry: Registry) -> str:
    return ", ".join(spec.name for spec in registry)


def _examples(by_verb: dict[str, Task]) -> str:
    """The first example of the ask and edit tasks: a program as the planner is shown it."""
    shown = []
    for verb in ("ask", "edit"):
        task = by_verb.get(verb)
        if task is not None and task.examples:
            example = task.examples[0]
            shown.append(f"{task.format_input(example.input)}\n{example.program.strip()}")
    return "\n\n".join(shown)


def tool_descriptions(registry: Registry) -> dict[str, str]:
    """Each tool's description, rendered from ``registry`` and the tasks' files."""
    names = _module_names(registry)
    by_verb = _verb_tasks()

    def planned(verb: str, what: str, gives: str) -> str:
        task = by_verb.get(verb)
        about = f" ({task.description}; visprog's task {task.name})" if task is not None and task.description else ""
        return (
            f"{what}{about}. An LLM writes a short VisProg program for it, visprog checks the program and runs it "
            f"step by step, and {gives}, with the program and every step's output, so the answer can be checked. "
            f"The programs call visprog's modules: {names}. list_modules describes them; run_program runs a program "
            "you write."
        )

    examples = _examples(by_verb)
    language = (
        "A program has one step per line, NAME=Module(arg=value, ...): NAME is a new upper-case variable (BOX0, "
        "IMAGE1, ANSWER2) that later steps use. Arguments go by keyword, with the names listed below. A value is a "
        "string in quotes, a number, True, False, None, a list (['cat', 'dog']), an earlier variable, or an input "
        f"image ({', '.join(input_names())}), given in images by name. The last line is "
        "FINAL_RESULT=Result(var=NAME)."
    )
    return {
        "ask_image": planned("ask", "Answer a question about one image", "the answer comes back"),
        "verify_images": planned(
            "verify",
            "Say whether a statement about two images (LEFT and RIGHT) is true",
            "true or false comes back",
        ),
        "edit_image": planned(
            "edit", "Edit an image as an instruction says", "the edited image comes back as image content (PNG)"
        ),
        "run_program": (
            "Run a VisProg program on images and return its result (an image result as image content, PNG) with "
            f"every step's output. {language} check_program checks a program without running it.\n\n"
            + (f"Examples:\n\n{examples}\n\n" if examples else "")
            + f"Modules:\n\n{module_reference(registry)}"
        ),
        "check_program": (
            "Check a VisProg program without running it: parse it and type-check it against visprog's modules "
            f"({names}). Gives every problem with its line and column, or the program's steps, inputs and result "
            "type. The language and the modules are described with run_program."
        ),
        "list_modules": (
            f"List visprog's {len(list(registry))} modules ({names}): each one's signature, what it does, its "
            "arguments and what it returns, as the planner reads them."
        ),
    }


def _failure(e: VisprogError, program: str | None = None) -> CallToolResult:
    return error_result(e, program=program)


class _Tools:
    """The tools' bodies; each returns a ``CallToolResult``, and an error as one with ``isError``."""

    def __init__(self, settings: ToolSettings) -> None:
        self.settings = settings
        self._runs = threading.Lock()  # one run at a time: the models and their caches are shared
        self._planning = threading.Lock()
        self._planner: Planner | None = None

    def _get_planner(self) -> Planner:
        """The planner, made on the first call that plans (once, even with concurrent calls)."""
        with self._planning:
            if self._planner is None:
                if self.settings.planner_factory is None:
                    raise ConfigError("this server has no LLM to plan with; run_program runs a program you write")
                self._planner = self.settings.planner_factory()
            return self._planner

    def _image(self, value: str, name: str) -> Any:
        s = self.settings
        return read_image(value, name, allow_paths=s.allow_paths, max_pixels=s.max_pixels)

    def _solve(self, verb: str, images: list[tuple[str, str]], text: str, samples: int) -> CallToolResult:
        started = time.perf_counter()
        try:
            loaded = [self._image(value, name) for name, value in images]
            planner = self._get_planner()
            with self._runs:
                solution = solve_by_verb(
                    verb,
                    loaded,
                    text,
                    planner=planner,
                    runtime=self.settings.runtime,
                    samples=samples,
                    max_pixels=self.settings.max_pixels,
                    on_event=self.settings.on_event,
                )
        except VisprogError as e:
            return _failure(e)
        valid = sum(1 for _, t in solution.samples if t is not None and not isinstance(t, Exception))
        extra = {
            "task": solution.task,
            "text": text,
            "agreement": solution.agreement,
            "samples": samples,
            "valid_samples": valid,
            "total_seconds": round(time.perf_counter() - started, 6),
        }
        return trace_result(solution.trace, program=solution.program, extra=extra)

    def ask_image(
        self,
        image: ImageArg,
        question: Annotated[str, Field(description="the question, e.g. 'How many dogs are on the sofa?'")],
        samples: Samples = 1,
    ) -> CallToolResult:
        return self._solve("ask", [("image", image)], question, samples)

    def verify_images(
        self,
        left: Annotated[str, Field(description=f"the LEFT image; {IMAGE_HELP}")],
        right: Annotated[str, Field(description=f"the RIGHT image; {IMAGE_HELP}")],
        statement: Annotated[str, Field(description="the statement about the two images, to be judged true or false")],
        samples: Samples = 1,
    ) -> CallToolResult:
        return self._solve("verify", [("left", left), ("right", right)], statement, samples)

    def edit_image(
        self,
        image: ImageArg,
        instruction: Annotated[str, Field(description="what to change, e.g. 'Hide the face with a smiley'")],
        samples: Samples = 1,
    ) -> CallToolResult:
        return self._solve("edit", [("image", image)], instruction, samples)

    def run_program(
        self,
        program: Annotated[str, Field(description=_PROGRAM_HELP)],
        images: Annotated[
            dict[str, str] | None,
            Field(description=_IMAGES_HELP),
        ] = None,
    ) -> CallToolResult:
        try:
            loaded = {name: self._image(value, name) for name, value in (images or {}).items()}
            with self._runs:
                trace = run(
                    program,
                    loaded,
                    registry=self.settings.registry,
                    runtime=self.settings.runtime,
                    on_event=self.settings.on_event,
                )
        except ProgramError as e:
            return _failure(e, program)
        except VisprogError as e:
            return _failure(e)
        return trace_result(trace, program=program)

    def check_program(
        self,
        program: Annotated[str, Field(description=_PROGRAM_HELP)],
        inputs: Annotated[
            list[str] | None,
            Field(description=f"the inputs the program will be given (default: {', '.join(input_names())})"),
        ] = None,
    ) -> CallToolResult:
        try:
            checked = check(program, inputs, registry=self.settings.registry)
        except ProgramError as e:
            count = len(e.diagnostics)
            data = {"ok": False, "kind": e.kind, "diagnostics": [diagnostic_data(d, "error") for d in e.diagnostics]}
            text = f"{count} {e.kind}{'s' if count > 1 else ''}:\n{e}"
            return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)
        result = checked.steps[checked.result]
        warnings = [diagnostic_data(w, "warning") for w in checked.warnings]
        data = {
            "ok": True,
            "steps": len(checked.steps),
            "inputs": list(checked.used_inputs),
            "result": {"name": result.step.target, "type": str(result.type)},
            "diagnostics": warnings,
        }
        lines = [
            f"ok: {len(checked.steps)} steps, inputs {', '.join(checked.used_inputs) or 'none'}, "
            f"result {result.step.target} ({result.type})"
        ]
        lines += [f"warning: {w.render()}" for w in checked.warnings]
        return CallToolResult(content=[TextContent(type="text", text="\n".join(lines))], structured_content=data)

    def list_modules(self) -> CallToolResult:
        registry = self.settings.registry
        assert registry is not None
        data = {"modules": [_module_data(spec) for spec in registry]}
        return CallToolResult(
            content=[TextContent(type="text", text=module_reference(registry))], structured_content=data
        )


def _module_data(spec: ModuleSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "signature": spec.signature(),
        "summary": spec.summary,
        "returns": str(spec.returns),
        "params": [
            {"name": p.name, "type": str(p.type), "required": p.required, "description": p.description}
            for p in spec.params
        ],
        "options": [
            {"name": o.name, "type": o.type_name, "default": o.default_text(), "help": o.help} for o in spec.options
        ],
    }


_READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
_RUNS = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)
_PLANS = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=True)


def build_server(settings: ToolSettings | None = None, *, name: str = "visprog") -> MCPServer[Any]:
    """The MCP server with the six tools, their descriptions rendered from ``settings.registry`` (default:
    the default registry, plugins included). Serve it with ``run_stdio_async`` or ``streamable_http_app``."""
    from visprog.running.plugins import default_registry

    settings = settings or ToolSettings()
    if settings.registry is None:
        settings.registry = default_registry()
    tools = _Tools(settings)
    described = tool_descriptions(settings.registry)
    server: MCPServer[Any] = MCPServer(
        name,
        title="visprog",
        version=__version__,
        instructions=(
            "visprog answers questions about images, judges statements about two images and edits images by "
            "writing and running short VisProg programs; every answer comes with its program and the output of each "
            "step. Images are file paths on this machine or base64."
        ),
        log_level="WARNING",
    )
    hints = {
        "ask_image": _PLANS,
        "verify_images": _PLANS,
        "edit_image": _PLANS,
        "run_program": _RUNS,
        "check_program": _READ_ONLY,
        "list_modules": _READ_ONLY,
    }
    for tool, hint in hints.items():
        server.add_tool(getattr(tools, tool), name=tool, description=described[tool], annotations=hint)
    return server
