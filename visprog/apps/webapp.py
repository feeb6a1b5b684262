"""The web app: upload an image, type a question or an instruction, see the program, its trace and the result.

    visprog serve [--host 127.0.0.1] [--port 7860]

:func:`build_app` returns a :class:`gradio.Blocks`; :func:`serve` builds and
launches it. The work is done by plain functions that take and return plain
values (:mod:`visprog.apps.webapp_actions`: :func:`~visprog.apps.webapp_actions.plan_and_run`,
:func:`~visprog.apps.webapp_actions.run_program`, ...), so they are tested
without a browser; the Gradio callbacks here only translate their
:class:`~visprog.apps.webapp_actions.Outcome` into component updates. The
app's style sheet is package data (``webapp.css``). The planner is created on
the first request, so the app starts without an LLM.

Nothing here imports Gradio at import time; it is an optional dependency.
"""

from __future__ import annotations

import importlib.resources
import inspect
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from visprog.apps.webapp_actions import (
    DEFAULT_MAX_UPLOAD_BYTES,
    Outcome,
    auto_help,
    plan_and_run,
    run_program,
    task_choices,
)
from visprog.errors import VisprogError
from visprog.language.signatures import Registry
from visprog.running.runtime import Runtime

if TYPE_CHECKING:
    import gradio

    from visprog.planner.core import Planner

__all__ = ["CSS", "build_app", "launch_options", "serve"]


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

#: The app's style sheet (package data: visprog/apps/webapp.css).
CSS = importlib.resources.files("visprog.apps").joinpath("webapp.css").read_text(encoding="utf-8")

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

    def on_plan(
        text: str | None, task: str, samples: float | None, image: str | None, left: str | None, right: str | None
    ) -> tuple[Any, ...]:
        count = max(1, int(samples or 1))
        outcome = plan_and_run(
            text, task, image, left, right, planner=planner, runtime=runtime, samples=count, **limits
        )
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
                    choices=task_choices(),
                    value="auto",
                    label="Task",
                    info=auto_help(),
                    elem_id="vp-task",
                )
                samples = gr.Slider(
                    minimum=1,
                    maximum=9,
                    step=1,
                    value=1,
                    label="Samples",
                    info="draw this many programs, run them and take the answer most of them give",
                    elem_id="vp-samples",
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
        plan_inputs = [text, task, samples, image, left, right]
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
