"""The web app: upload an image, type a question or an instruction, see the program, its trace and the result.

    visprog serve [--host 127.0.0.1] [--port 7860]

:func:`build_app` returns a :class:`gradio.Blocks`; :func:`serve` builds and
launches it. The work is done by plain functions that take and return plain
values (:func:`infer_task`, :func:`plan_and_run`, :func:`run_program`), so
they are tested without a browser; the Gradio callbacks only translate their
:class:`Outcome` into component updates.

Every error a user can cause (no image, a file over the upload limit, an
image over the pixel limit, a program that does not check, a planner that
finds no valid program, a step that fails, an LLM server that cannot be
reached) comes back as an :class:`Outcome` with ``ok=False`` and a message,
never as a stack trace. The planner is created on the first request, so the
app starts without an LLM.

Nothing here imports Gradio at import time; it is an optional dependency.
"""

from __future__ import annotations

import html
import inspect
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from visprog.errors import ConfigError, ImageError, ProgramError, ServiceError, StepError, VisprogError
from visprog.language.signatures import Registry
from visprog.language.values import Image, describe_value
from visprog.running.runtime import Runtime
from visprog.running.trace import Trace

if TYPE_CHECKING:
    import gradio

    from visprog.planner.core import Planner

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "EDIT_VERBS",
    "TASK_CHOICES",
    "Outcome",
    "Refused",
    "build_app",
    "infer_task",
    "launch_options",
    "load_uploads",
    "plan_and_run",
    "run_program",
    "serve",
    "trace_view",
]

log = logging.getLogger(__name__)

#: Largest uploaded file accepted, in bytes.
DEFAULT_MAX_UPLOAD_BYTES = 20_000_000

#: (label, value) of the task choice; ``auto`` infers the task with :func:`infer_task`.
TASK_CHOICES: tuple[tuple[str, str], ...] = (
    ("auto", "auto"),
    ("ask (gqa)", "gqa"),
    ("verify (nlvr)", "nlvr"),
    ("edit", "edit"),
    ("tag", "tag"),
)

#: First words that make an instruction an edit.
EDIT_VERBS: frozenset[str] = frozenset(
    {"hide", "replace", "blur", "remove", "color", "colour", "crop", "put", "change", "make"}
)
_TAG_WORDS = frozenset({"tag", "label", "identify"})
_TASK_NAMES = {value: label for label, value in TASK_CHOICES}
_WORD = re.compile(r"[a-z]+")

#: What each task reads, in the order the UI asks for it.
_TASK_INPUTS: dict[str, tuple[str, ...]] = {
    "gqa": ("IMAGE",),
    "nlvr": ("LEFT", "RIGHT"),
    "edit": ("IMAGE",),
    "tag": ("IMAGE",),
}

ImagePath = str | os.PathLike[str] | None


# --- the task -------------------------------------------------------------------------------


def infer_task(text: str | None, n_images: int) -> str:
    """The task (``gqa``, ``nlvr``, ``edit`` or ``tag``) for ``text`` on ``n_images`` images.

    Two images or more: ``nlvr`` (a statement about LEFT and RIGHT). Otherwise
    an instruction whose first word is an edit verb (hide, replace, blur,
    remove, color, colour, crop, put, change, make) is an ``edit``; one that
    starts with tag, label or identify is a ``tag``; anything else is a
    question (``gqa``). Case and leading punctuation are ignored.
    """
    if n_images >= 2:
        return "nlvr"
    first = _WORD.search((text or "").lower())
    word = first.group(0) if first is not None else ""
    if word in EDIT_VERBS:
        return "edit"
    if word in _TAG_WORDS:
        return "tag"
    return "gqa"


# --- outcomes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one request produced, in plain values.

    ``program`` is ``None`` when the program box should be left as it is.
    ``image`` is set when the result is an image, ``answer`` when it is
    anything else. ``title`` and ``message`` say what happened (or what went
    wrong, with ``ok=False``); ``message`` may span lines (diagnostics).
    """

    ok: bool
    title: str
    message: str = ""
    task: str | None = None
    program: str | None = None
    trace_html: str = ""
    image: Image | None = None
    answer: str | None = None

    def status_html(self) -> str:
        """The title and message as a small HTML panel (green for success, red for an error)."""
        if self.ok:
            colours = "border-left:4px solid #16a34a;background:#f0fdf4;color:#14532d"
        else:
            colours = "border-left:4px solid #dc2626;background:#fef2f2;color:#7f1d1d"
        body = ""
        if "\n" in self.message:  # diagnostics: keep the carets under their columns
            body = (
                '<pre style="margin:6px 0 0;white-space:pre;overflow-x:auto;font-size:13px;line-height:1.4;'
                f'background:none;color:inherit;border:0;padding:0">{html.escape(self.message)}</pre>'
            )
        elif self.message:
            body = f'<div style="margin-top:4px">{html.escape(self.message)}</div>'
        role = "status" if self.ok else "alert"
        return (
            f'<div class="vp-status vp-{"ok" if self.ok else "error"}" role="{role}" '
            f'style="{colours};padding:10px 14px;border-radius:6px;font-size:14px">'
            f"<strong>{html.escape(self.title)}</strong>{body}</div>"
        )


class Refused(VisprogError):
    """A request the app will not run (no image, a file too large, ...): the title and message the user sees."""

    def __init__(self, title: str, message: str = "") -> None:
        super().__init__(f"{title}: {message}" if message else title)
        self.title = title
        self.message = message


def _failure(title: str, message: str = "", **fields: Any) -> Outcome:
    return Outcome(False, title, message, **fields)


# --- inputs ---------------------------------------------------------------------------------


def _megabytes(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


def load_uploads(
    images: Mapping[str, ImagePath],
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int | None = None,
) -> dict[str, Image]:
    """Load the uploaded files (``{"IMAGE": path}``; ``None`` for none) as RGB images.

    Raises :class:`Refused` for a file over ``max_upload_bytes`` or an image that
    cannot be read or is over ``max_pixels``.
    """
    from visprog.running.images import load_image

    loaded: dict[str, Image] = {}
    for name, path in images.items():
        if path is None or path == "":
            continue
        try:
            size = os.path.getsize(path)
        except OSError as e:
            raise Refused(f"{name}: the uploaded file cannot be read", e.strerror or str(e)) from e
        if size > max_upload_bytes:
            raise Refused(
                f"{name}: the file is too large",
                f"The file is {_megabytes(size)}; the limit is {_megabytes(max_upload_bytes)} per image.",
            )
        try:
            loaded[name] = load_image(path, max_pixels=max_pixels, name=name)
        except ImageError as e:
            if "pixels" in str(e) and "limit" in str(e):
                raise Refused(f"{name}: the image has too many pixels", str(e)) from e
            raise Refused(f"{name}: the image cannot be used", str(e)) from e
    return loaded


def _needs(task: str, loaded: Mapping[str, Image]) -> None:
    names = _TASK_INPUTS.get(task, ("IMAGE",))
    missing = [n for n in names if n not in loaded]
    if not missing:
        return
    if names == ("IMAGE",):
        raise Refused(
            "No image",
            f"Upload an image under 'One image' first: {_TASK_NAMES.get(task, task)} works on one image (IMAGE).",
        )
    raise Refused(
        "Two images needed",
        f"{_TASK_NAMES.get(task, task)} compares two images: upload {' and '.join(missing)} under 'Two images'.",
    )


# --- the trace ------------------------------------------------------------------------------


def trace_view(trace: Trace | None, text: str | None = None) -> str:
    """HTML showing ``trace``: its own ``to_html()`` in a frame when it has one, else its text.

    ``text`` (the question or instruction) heads the rich view.
    """
    if trace is None:
        return ""
    to_html = getattr(trace, "to_html", None)
    if callable(to_html):
        try:
            try:
                document = str(to_html(text=text))
            except TypeError:  # a to_html() that takes no text
                document = str(to_html())
        except Exception:  # the rich view is a nicety: fall back to the text
            log.exception("Trace.to_html() failed; showing the text trace")
        else:
            # A frame keeps the trace's own styles apart from the app's; it grows to fit its content.
            return (
                '<iframe class="vp-trace-frame" title="Trace" sandbox="allow-same-origin" '
                'style="width:100%;min-height:320px;border:0" '
                "onload=\"this.style.height=(this.contentDocument.documentElement.scrollHeight+24)+'px'\" "
                f'srcdoc="{html.escape(document, quote=True)}"></iframe>'
            )
    return (
        '<pre class="vp-trace-text" style="white-space:pre-wrap;font-size:13px;line-height:1.45;'
        f'margin:0">{html.escape(trace.to_text())}</pre>'
    )


def _result_fields(trace: Trace) -> dict[str, Any]:
    result = trace.result
    if isinstance(result, Image):
        return {"image": result}
    if isinstance(result, str):
        return {"answer": result}
    if isinstance(result, (bool, int, float)):
        return {"answer": str(result)}
    return {"answer": describe_value(result)}


def _ran(trace: Trace, title: str, text: str | None = None, **fields: Any) -> Outcome:
    steps = len(trace.records)
    message = f"{steps} step{'s' if steps != 1 else ''} in {trace.seconds:.2f} s"
    return Outcome(True, title, message, trace_html=trace_view(trace, text), **_result_fields(trace), **fields)


def _step_failed(e: StepError, text: str | None = None, **fields: Any) -> Outcome:
    detail = f"line {e.line}, {e.module} (step {e.target}): {e.reason}\n  {e.source_line.strip()}"
    detail += "\nThe steps before it are shown in the trace."
    return _failure(f"Step {e.target} failed", detail, trace_html=trace_view(e.trace, text), **fields)


def _program_error(e: ProgramError, **fields: Any) -> Outcome:
    count = len(e.diagnostics)
    return _failure(f"The program has {count} {e.kind}{'s' if count > 1 else ''}", e.render(), **fields)


def _unexpected(e: Exception, **fields: Any) -> Outcome:
    log.exception("unexpected error in the web app")
    return _failure("Something went wrong", f"{type(e).__name__}: {e}", **fields)


# --- handlers -------------------------------------------------------------------------------


def plan_and_run(
    text: str | None,
    task: str = "auto",
    image: ImagePath = None,
    left: ImagePath = None,
    right: ImagePath = None,
    *,
    planner: Planner | Callable[[], Planner],
    runtime: Runtime | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int | None = None,
) -> Outcome:
    """Plan a program for ``text`` and run it on the uploaded images.

    ``task`` is ``auto`` (see :func:`infer_task`), ``gqa``, ``nlvr``, ``edit``
    or ``tag``; the images are file paths (``None`` where nothing was
    uploaded). ``planner`` is a :class:`~visprog.planner.core.Planner` or a
    function that returns one (called here, so that a planner that cannot be
    created is reported like any other error).
    """
    from visprog.planner.core import PlanningError
    from visprog.running.interpreter import Interpreter

    text = (text or "").strip()
    try:
        loaded = load_uploads(
            {"IMAGE": image, "LEFT": left, "RIGHT": right}, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels
        )
        if not text:
            raise Refused("Nothing to do", "Type a question, a statement or an instruction first.")
        inferred = task in ("", "auto")
        if inferred:
            task = infer_task(text, 2 if "LEFT" in loaded and "RIGHT" in loaded else len(loaded))
        elif task not in _TASK_INPUTS:
            raise Refused("Unknown task", f"choose one of {', '.join(v for _, v in TASK_CHOICES)}, not {task!r}")
        _needs(task, loaded)
    except Refused as e:
        return _failure(e.title, e.message)
    how = f"{_TASK_NAMES[task]}{', inferred from the text' if inferred else ''}"
    images = {name: loaded[name] for name in _TASK_INPUTS[task]}
    try:
        active = cast("Planner", planner) if hasattr(planner, "plan") else cast("Callable[[], Planner]", planner)()
        plan = active.plan(task, text)
    except PlanningError as e:
        last = next((a.program for a in reversed(e.attempts) if a.program.strip()), None)
        return _failure(
            "The planner found no valid program",
            f"{e}\n\nThe last attempt is in the program box: fix it and press 'Run edited program'.",
            task=task,
            program=last.strip() if last else None,
        )
    except ServiceError as e:
        return _failure(
            "The planner's LLM could not be reached",
            f"{e}\n\nStart the OpenAI-compatible server (or set OPENAI_BASE_URL / OPENAI_API_KEY) and try again; "
            "a program in the program box can still be run with 'Run edited program'.",
            task=task,
        )
    except ConfigError as e:
        return _failure("The planner is not configured", str(e), task=task)
    except VisprogError as e:  # a local LLM whose weights are missing, ...
        return _failure("The planner failed", str(e), task=task)
    except Exception as e:
        return _unexpected(e, task=task)
    program = plan.program.strip()
    try:
        trace = Interpreter(active.registry, runtime).run(plan.checked, images)
    except StepError as e:
        return _step_failed(e, text, task=task, program=program)
    except VisprogError as e:
        return _failure("The program could not run", str(e), task=task, program=program)
    except Exception as e:
        return _unexpected(e, task=task, program=program)
    return _ran(trace, f"Done ({how})", text, task=task, program=program)


def run_program(
    program: str | None,
    image: ImagePath = None,
    left: ImagePath = None,
    right: ImagePath = None,
    *,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int | None = None,
) -> Outcome:
    """Check and run ``program`` as written (no planner) on the uploaded images.

    A program that does not parse or check comes back with the checker's
    diagnostics (line, column, the line with a caret) as its message.
    """
    from visprog.running.interpreter import Interpreter
    from visprog.solve import check

    source = program or ""
    if not source.strip():
        return _failure("No program", "Plan one with 'Plan and run', or write one in the program box.")
    try:
        checked = check(source, registry=registry)
    except ProgramError as e:
        return _program_error(e)
    try:
        loaded = load_uploads(
            {"IMAGE": image, "LEFT": left, "RIGHT": right}, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels
        )
        missing = [name for name in checked.used_inputs if name not in loaded]
        if missing:
            where = " under 'Two images'" if set(missing) <= {"LEFT", "RIGHT"} else ""
            raise Refused(
                "No image" if missing == ["IMAGE"] else "Images missing",
                f"The program reads {', '.join(missing)}: upload {'it' if len(missing) == 1 else 'them'}{where} first.",
            )
    except Refused as e:
        return _failure(e.title, e.message)
    images = {name: loaded[name] for name in checked.used_inputs}
    try:
        trace = Interpreter(registry, runtime).run(checked, images)
    except StepError as e:
        return _step_failed(e)
    except ProgramError as e:
        return _program_error(e)
    except VisprogError as e:
        return _failure("The program could not run", str(e))
    except Exception as e:
        return _unexpected(e)
    return _ran(trace, "Done (edited program)")


# --- the app --------------------------------------------------------------------------------


class _LazyPlanner:
    """Creates the planner on first use (once, even with concurrent requests)."""

    def __init__(self, factory: Callable[[], Planner]) -> None:
        self._factory = factory
        self._planner: Planner | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Planner:
        with self._lock:
            if self._planner is None:
                self._planner = self._factory()
            return self._planner


def _gradio() -> Any:
    try:
        import gradio
    except ImportError as e:
        raise VisprogError(f"the web app needs Gradio, an optional dependency ({e}): pip install 'visprog[web]'") from e
    return gradio


_FONTS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif")
_MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")

CSS = """
.vp-header h1 { margin-bottom: 0.2em; }
.vp-header p { margin-top: 0; opacity: 0.8; }
#vp-status .html-container { padding: 0; }
"""

_TRACE_PLACEHOLDER = '<p style="opacity:0.7">Each step of the program, with its inputs and output, appears here.</p>'
_NOTHING_RAN = '<p style="opacity:0.7">Nothing ran.</p>'

_INTRO = """\
# VisProg
Upload an image, ask a question or give an instruction. An LLM writes a short program over vision
modules; you see the program, every step's output and the result. Edit the program and run it again.
"""

_EXAMPLES = (
    "Hide the face with sunglasses emoji",
    "How many people are in the image?",
    "Blur the background",
    "Tag the main characters of this picture",
)


def _theme() -> Any:
    gr = _gradio()

    return gr.themes.Default(primary_hue="indigo", font=list(_FONTS), font_mono=list(_MONO_FONTS))


def _theme_at_launch() -> bool:
    """Gradio 6 takes ``theme`` and ``css`` in ``launch()``; Gradio 5 in ``Blocks()``."""
    gr = _gradio()

    return "theme" in inspect.signature(gr.Blocks.launch).parameters


def launch_options(max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> dict[str, Any]:
    """Keyword arguments for ``app.launch()``: Gradio's own upload limit, and the theme on Gradio 6."""
    options: dict[str, Any] = {"max_file_size": max_upload_bytes}
    if _theme_at_launch():
        options.update(theme=_theme(), css=CSS)
    return options


def build_app(
    *,
    planner_factory: Callable[[], Planner] | None = None,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int | None = None,
) -> gradio.Blocks:
    """The VisProg web app as a :class:`gradio.Blocks` (launch it with ``launch_options()``).

    ``planner_factory`` returns the :class:`~visprog.planner.core.Planner`
    (default :func:`visprog.solve.create_planner` with ``registry``); it is
    called on the first "Plan and run", not here. ``registry`` and
    ``runtime`` are what "Run edited program" runs with (planned programs
    run with the planner's registry). ``max_upload_bytes`` caps each
    uploaded file; ``max_pixels`` each image's width x height (default
    :func:`visprog.running.images.max_pixels`).
    """
    gr = _gradio()

    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be positive, got {max_upload_bytes}")

    def default_factory() -> Planner:
        from visprog.solve import create_planner

        return create_planner(registry=registry)

    planner = _LazyPlanner(planner_factory or default_factory)
    limits: dict[str, Any] = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels}

    def show(outcome: Outcome, with_program: bool) -> tuple[Any, ...]:
        shown_image = outcome.image is not None or outcome.answer is None
        updates: list[Any] = [
            outcome.status_html(),
            gr.update(value=outcome.image, visible=shown_image),
            gr.update(value=outcome.answer or "", visible=not shown_image),
            outcome.trace_html or _NOTHING_RAN,
        ]
        if with_program:
            updates.append(gr.update() if outcome.program is None else outcome.program)
        return tuple(updates)

    def on_plan(text: str | None, task: str, image: str | None, left: str | None, right: str | None) -> tuple[Any, ...]:
        outcome = plan_and_run(text, task, image, left, right, planner=planner, runtime=runtime, **limits)
        return show(outcome, with_program=True)

    def on_run(program: str | None, image: str | None, left: str | None, right: str | None) -> tuple[Any, ...]:
        outcome = run_program(program, image, left, right, registry=registry, runtime=runtime, **limits)
        return show(outcome, with_program=False)

    blocks_options: dict[str, Any] = {}
    if not _theme_at_launch():
        blocks_options.update(theme=_theme(), css=CSS)

    def upload(label: str, elem_id: str) -> gradio.Image:
        # filepath and no image_mode: Gradio hands over the file as uploaded (its size is checked here).
        return gr.Image(
            label=label, type="filepath", image_mode=None, sources=["upload", "clipboard"], height=320, elem_id=elem_id
        )

    with gr.Blocks(title="VisProg", analytics_enabled=False, **blocks_options) as app:
        gr.Markdown(_INTRO, elem_classes=["vp-header"])
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                with gr.Tabs():
                    with gr.Tab("One image"):
                        image = upload("IMAGE", "vp-image")
                    with gr.Tab("Two images"):
                        with gr.Row():
                            left = upload("LEFT", "vp-left")
                            right = upload("RIGHT", "vp-right")
                text = gr.Textbox(
                    label="Question, statement or instruction",
                    placeholder="e.g. Hide the face with sunglasses emoji",
                    lines=2,
                    elem_id="vp-text",
                )
                task = gr.Radio(
                    choices=list(TASK_CHOICES),
                    value="auto",
                    label="Task",
                    info="auto: two images → verify; an edit verb first (hide, replace, blur, ...) → edit; "
                    "tag, label or identify → tag; otherwise ask",
                    elem_id="vp-task",
                )
                plan_button = gr.Button("Plan and run", variant="primary", elem_id="vp-plan")
                gr.Examples(examples=[[e] for e in _EXAMPLES], inputs=[text], label="Examples")
            with gr.Column(scale=1):
                status = gr.HTML("", elem_id="vp-status")
                result_image = gr.Image(
                    label="Result", type="pil", format="png", interactive=False, elem_id="vp-result", height=420
                )
                answer = gr.Textbox(label="Answer", interactive=False, visible=False, elem_id="vp-answer")
                program = gr.Code(
                    label="Program (editable)", language="python", interactive=True, lines=6, elem_id="vp-program"
                )
                run_button = gr.Button("Run edited program", elem_id="vp-run")
        gr.Markdown("### Trace")
        trace = gr.HTML(_TRACE_PLACEHOLDER, elem_id="vp-trace")

        outputs = [status, result_image, answer, trace]
        plan_inputs = [text, task, image, left, right]
        for event in (plan_button.click, text.submit):
            event(on_plan, plan_inputs, [*outputs, program], concurrency_id="visprog-run", concurrency_limit=1)
        run_button.click(
            on_run, [program, image, left, right], outputs, concurrency_id="visprog-run", concurrency_limit=1
        )
    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    **kwargs: Any,
) -> None:
    """Build the app (``kwargs`` go to :func:`build_app`) and serve it on ``host:port`` until interrupted."""
    app = build_app(max_upload_bytes=max_upload_bytes, **kwargs)
    app.launch(server_name=host, server_port=port, share=False, **launch_options(max_upload_bytes))
