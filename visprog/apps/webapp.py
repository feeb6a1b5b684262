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

The work shows as it happens: a request runs on a worker thread and the
callbacks are generators that turn its events into the status panel and the
step cards (:mod:`visprog.apps.webapp_live`). While a request runs (or waits
in the queue) both run buttons are disabled; a run that was queued anyway runs
the program the box shows when it starts
(:func:`~visprog.apps.webapp_actions.program_to_run`). Uploads reach the
handlers as files, unread, so that a file that is not an image gets the CLI's
message in the status panel rather than Gradio's error.

Nothing here imports Gradio at import time; it is an optional dependency.
"""

from __future__ import annotations

import importlib.resources
import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from visprog.apps.webapp_actions import (
    DEFAULT_MAX_UPLOAD_BYTES,
    UPLOAD_ERROR,
    Outcome,
    Refused,
    auto_help,
    load_uploads,
    plan_and_run,
    program_to_run,
    run_program,
    task_choices,
)
from visprog.apps.webapp_files import EXAMPLES, TraceFiles, example_rows
from visprog.apps.webapp_live import LiveView, follow
from visprog.errors import VisprogError
from visprog.language.signatures import Registry
from visprog.running.events import Listener, stream
from visprog.running.runtime import Runtime

if TYPE_CHECKING:
    import gradio

    from visprog.planner.core import Planner

__all__ = ["CSS", "JS", "build_app", "launch_options", "serve"]

log = logging.getLogger(__name__)


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
_QUEUED = "Queued: it starts when the requests before it have finished"
_WAITING = '<p style="opacity:0.7">The steps appear here as they finish.</p>'

_INTRO = """\
# VisProg
Upload an image, ask a question or give an instruction. An LLM writes a short program over vision
modules; you see the program, every step's output and the result. Edit the program and run it again.
"""

_TEXT_HELP = "Enter runs it; Shift+Enter adds a line."

#: Run when the page loads. Gradio's image upload refuses, in the browser, a file whose type is not image/*,
#: with its own message; this hands such a file on (typed as an image) so that the app reads it as the CLI
#: does and says in the status panel what the file is not.
JS = """() => {
  const slots = '#vp-image, #vp-left, #vp-right';
  const unchecked = f => f.type.startsWith('image/') ? f
    : new File([f], f.name, {type: 'image/x-unchecked', lastModified: f.lastModified});
  const retyped = files => {
    const list = new DataTransfer();
    Array.from(files, unchecked).forEach(f => list.items.add(f));
    return list;
  };
  const plain = files => Array.from(files || []).every(f => f.type.startsWith('image/'));
  document.addEventListener('change', e => {
    const input = e.target;
    if (input instanceof HTMLInputElement && input.type === 'file' && input.closest(slots) && !plain(input.files)) {
      input.files = retyped(input.files).files;
    }
  }, true);
  document.addEventListener('drop', e => {
    const target = e.target instanceof Element ? e.target : null;
    if (!target || !target.closest(slots) || !e.dataTransfer || plain(e.dataTransfer.files)) return;
    e.preventDefault();
    e.stopImmediatePropagation();
    const again = {dataTransfer: retyped(e.dataTransfer.files), bubbles: true, cancelable: true, composed: true};
    target.dispatchEvent(new DragEvent('drop', again));
  }, true);
}"""


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
        options.update(theme=_theme(), css=CSS, js=JS)
    return options


def _unread(component: Any) -> Any:
    """``component`` (an upload) hands its file to the callbacks as it is, without opening it with Pillow.

    Gradio's own image upload opens the file first and fails with its own error
    on a file that is not an image; the handlers read it instead
    (:func:`~visprog.apps.webapp_actions.load_uploads`) and say what is wrong.
    A pasted image (a ``data:`` URL) is still decoded by Gradio.
    """
    decode = component.preprocess

    def preprocess(payload: Any) -> Any:
        path = getattr(payload, "path", None)
        if payload is None or path is None or str(getattr(payload, "url", "") or "").startswith("data:"):
            return decode(payload)
        return str(path)

    component.preprocess = preprocess
    return component


def build_app(
    *,
    planner_factory: Callable[[], Planner] | None = None,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int | None = None,
    trace_files: TraceFiles | None = None,
) -> gradio.Blocks:
    """The VisProg web app as a :class:`gradio.Blocks` (launch it with ``launch_options()``).

    ``planner_factory`` returns the :class:`~visprog.planner.core.Planner`
    (default :func:`visprog.solving.create_planner` with ``registry``); it is
    called on the first "Plan and run", not here. ``registry`` and
    ``runtime`` are what "Run edited program" runs with (planned programs
    run with the planner's registry). ``max_upload_bytes`` caps each
    uploaded file; ``max_pixels`` each image's width x height (default
    :func:`visprog.running.images.max_pixels`). ``trace_files`` writes the
    traces offered for download (default: in a new temporary folder).
    """
    gr = _gradio()

    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be positive, got {max_upload_bytes}")

    def default_factory() -> Planner:
        from visprog.solving import create_planner

        return create_planner(registry=registry)

    planner = _LazyPlanner(planner_factory or default_factory)
    limits: dict[str, Any] = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels}
    files = trace_files or TraceFiles()

    def started(view: LiveView) -> list[Any]:
        """The outputs as a request starts: the previous result, message and downloads cleared."""
        hidden = gr.update(value=None, visible=False)
        cleared = [gr.update(value=None, visible=True), gr.update(value="", visible=False)]
        return [view.status_html(), *cleared, view.trace_html(_WAITING), hidden, hidden]

    def progress(view: LiveView) -> list[Any]:
        return [view.status_html(), gr.skip(), gr.skip(), view.trace_html(_WAITING), gr.skip(), gr.skip()]

    def finished(outcome: Outcome, text: str | None) -> list[Any]:
        shown_image = outcome.image is not None or outcome.answer is None
        downloads = [gr.update(value=None, visible=False)] * 2
        if outcome.trace is not None:
            try:
                downloads = [gr.update(value=str(path), visible=True) for path in files.write(outcome.trace, text)]
            except Exception:  # the downloads are a nicety: the result is shown without them
                log.exception("writing the trace files for download failed")
        return [
            outcome.status_html(),
            gr.update(value=outcome.image, visible=shown_image),
            gr.update(value=outcome.answer or "", visible=not shown_image),
            outcome.trace_html or _NOTHING_RAN,
            *downloads,
        ]

    def live(
        work: Callable[[Listener], Outcome], view: LiveView, text: str | None, box: Callable[[str | None], list[Any]]
    ) -> Iterator[tuple[Any, ...]]:
        """Run ``work`` and yield the outputs as its events arrive, then its outcome; ``box`` updates the program."""
        yield (*started(view), *box(None))
        events = stream(work)
        shown = None
        for _ in follow(events, view):
            program = view.program if view.program != shown else None
            shown = view.program
            yield (*progress(view), *box(program))
        outcome = events.result
        yield (*finished(outcome, text), *box(outcome.program))

    def on_plan(
        text: str | None,
        task: str,
        samples: float | None,
        image: str | None,
        left: str | None,
        right: str | None,
        version: float | None,
        latest: tuple[int, str] | None,
    ) -> Iterator[tuple[Any, ...]]:
        count = max(1, int(samples or 1))
        number = max(int(version or 0), latest[0] if latest else 0)

        def box(program: str | None) -> list[Any]:
            """The program box, its number and the server's copy: updated when ``program`` is new."""
            nonlocal number
            if program is None:
                return [gr.skip(), gr.skip(), gr.skip()]
            number += 1
            return [program, number, (number, program)]

        def work(on_event: Listener) -> Outcome:
            return plan_and_run(
                text,
                task,
                image,
                left,
                right,
                planner=planner,
                runtime=runtime,
                samples=count,
                on_event=on_event,
                **limits,
            )

        yield from live(work, LiveView("Starting: reading the images", samples=count), text, box)

    def on_run(
        program: str | None,
        version: float | None,
        latest: tuple[int, str] | None,
        image: str | None,
        left: str | None,
        right: str | None,
    ) -> Iterator[tuple[Any, ...]]:
        source = program_to_run(program, version, latest)

        def work(on_event: Listener) -> Outcome:
            return run_program(
                source, image, left, right, registry=registry, runtime=runtime, on_event=on_event, **limits
            )

        yield from live(work, LiveView("Starting: checking the program"), None, lambda _: [])

    def on_upload(slot: str) -> Callable[[str | None, str | None], Any]:
        def check(path: str | None, status: str | None) -> Any:
            """A file that cannot be used is said at once; a good one clears that message."""
            if path:
                try:
                    load_uploads({slot: path}, **limits)
                except Refused as e:
                    return Outcome(False, e.title, e.message, uploads=True).status_html()
            return "" if UPLOAD_ERROR in (status or "") else gr.skip()

        return check

    def lock(pending: int | None) -> tuple[Any, ...]:
        """A request of this page is on its way: both run buttons off, the status says it waits its turn."""
        off = gr.update(interactive=False)
        return (pending or 0) + 1, off, off, LiveView(_QUEUED).status_html()

    def unlock(pending: int | None) -> tuple[Any, ...]:
        left = max(0, (pending or 0) - 1)
        return left, gr.update(interactive=left == 0), gr.update(interactive=left == 0)

    blocks_options: dict[str, Any] = {}
    if not _theme_at_launch():
        blocks_options.update(theme=_theme(), css=CSS, js=JS)

    def upload(label: str, elem_id: str) -> gradio.Image:
        # filepath and no image_mode: Gradio hands over the file as uploaded (its size is checked here).
        return _unread(
            gr.Image(
                label=label,
                type="filepath",
                image_mode=None,
                sources=["upload", "clipboard"],
                height=320,
                elem_id=elem_id,
            )
        )

    with gr.Blocks(title="VisProg", analytics_enabled=False, **blocks_options) as app:
        pending = gr.State(0)  # requests of this page started and not yet finished
        latest = gr.State(None)  # (number, program): the last program the app wrote into the program box
        gr.Markdown(_INTRO, elem_classes=["vp-header"])
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                with gr.Tabs(selected="one") as tabs:
                    with gr.Tab("One image", id="one"):
                        image = upload("IMAGE", "vp-image")
                    with gr.Tab("Two images", id="two"):
                        with gr.Row():
                            left = upload("LEFT", "vp-left")
                            right = upload("RIGHT", "vp-right")
                text = gr.Textbox(
                    label="Question, statement or instruction",
                    placeholder="e.g. Hide the face with sunglasses emoji",
                    info=_TEXT_HELP,
                    lines=1,
                    max_lines=8,
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
                examples = gr.Examples(
                    examples=example_rows(),
                    inputs=[image, left, right, text],
                    label="Examples (click one to fill the image and the text)",
                    examples_per_page=len(EXAMPLES),
                    elem_id="vp-examples",
                )
            with gr.Column(scale=1):
                status = gr.HTML("", elem_id="vp-status")
                result_image = gr.Image(
                    label="Result", type="pil", format="png", interactive=False, elem_id="vp-result", height=420
                )
                answer = gr.Textbox(label="Answer", interactive=False, visible=False, elem_id="vp-answer")
                program = gr.Code(
                    label="Program (editable)", language="python", interactive=True, lines=6, elem_id="vp-program"
                )
                version = gr.Number(value=0, precision=0, visible=False, elem_id="vp-program-version")
                run_button = gr.Button("Run edited program", elem_id="vp-run")
        with gr.Row(equal_height=True):
            gr.Markdown("### Trace")
            download_html = gr.DownloadButton(
                "Download trace (HTML)", visible=False, size="sm", elem_id="vp-download-html"
            )
            download_json = gr.DownloadButton(
                "Download trace (JSON)", visible=False, size="sm", elem_id="vp-download-json"
            )
        trace = gr.HTML(_TRACE_PLACEHOLDER, elem_id="vp-trace")

        outputs = [status, result_image, answer, trace, download_html, download_json]
        buttons = [pending, plan_button, run_button]
        quick: dict[str, Any] = {"queue": False, "show_progress": "hidden"}
        queued: dict[str, Any] = {"concurrency_id": "visprog-run", "concurrency_limit": 1, "show_progress": "hidden"}
        plan_inputs = [text, task, samples, image, left, right, version, latest]
        for trigger in (plan_button.click, text.submit):
            trigger(lock, [pending], [*buttons, status], **quick).then(
                on_plan, plan_inputs, [*outputs, program, version, latest], **queued
            ).then(unlock, [pending], buttons, **quick)
        run_button.click(lock, [pending], [*buttons, status], **quick).then(
            on_run, [program, version, latest, image, left, right], outputs, **queued
        ).then(unlock, [pending], buttons, **quick)
        for slot, component in (("IMAGE", image), ("LEFT", left), ("RIGHT", right)):
            component.upload(on_upload(slot), [component, status], [status], **quick)

        def show_tab(event: Any) -> Any:
            """The tab of the example's pictures: "Two images" for an example with LEFT and RIGHT."""
            row = EXAMPLES[event.index if isinstance(event.index, int) else event.index[0]]
            return gr.Tabs(selected="two" if row.left or row.right else "one")

        show_tab.__annotations__["event"] = gr.SelectData  # Gradio finds the event data by this annotation

        examples.dataset.select(show_tab, None, [tabs], **quick)
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
