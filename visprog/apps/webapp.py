"""The web app: upload an image, type a question or an instruction, see the program, its trace and the result.

    visprog serve [--host 127.0.0.1] [--port 7860] [--max-concurrent 4] [--request-timeout 300]

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
step cards (:mod:`visprog.apps.webapp_live`). Up to ``max_concurrent``
requests of different users are served at once, their programs on one shared
batcher; the others wait in Gradio's queue, and their status line says so. A
request that runs past ``request_timeout`` seconds ends there, with the steps
it had run (:mod:`visprog.apps.webapp_runs`). While a request of a page runs
(or waits in the queue) both run buttons of that page are disabled; a run
that was queued anyway runs the program the box shows when it starts
(:func:`~visprog.apps.webapp_actions.program_to_run`).

Uploads reach the handlers unread (:func:`~visprog.apps.webapp_uploads.upload_value`),
a ``data:`` URL's image too, so that each one, however it came, gets the same
checks (bytes, then pixels from the header, then decoding) and a file that is
not an image gets the CLI's message in the status panel rather than Gradio's
error. The page's script does the same for a file over Gradio's upload limit.

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
    UPLOAD_ERROR,
    Outcome,
    auto_help,
    over_time,
    plan_and_run,
    program_to_run,
    run_program,
    task_choices,
)
from visprog.apps.webapp_files import EXAMPLES, TraceFiles, example_rows
from visprog.apps.webapp_live import LiveView, follow
from visprog.apps.webapp_runs import DEFAULT_MAX_CONCURRENT, DEFAULT_REQUEST_TIMEOUT, Requests
from visprog.apps.webapp_uploads import DEFAULT_MAX_UPLOAD_BYTES, OVER_LIMIT, Refused, load_uploads, upload_value
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
_WAITING = '<p style="opacity:0.7">The steps appear here as they finish.</p>'

_INTRO = """\
# VisProg
Upload an image, ask a question or give an instruction. An LLM writes a short program over vision
modules; you see the program, every step's output and the result. Edit the program and run it again.
"""

_TEXT_HELP = "Enter runs it; Shift+Enter adds a line."

#: Run when the page loads. Gradio's image upload refuses, in the browser, a file whose type is not image/*
#: and a file over its upload limit (``max_file_size``), each with its own message; this hands such a file on
#: (typed as an image) so that the app reads it as the CLI does and says in the status panel what the file is
#: not. A file over the limit is not sent: a few bytes that give its size go in its place (``OVER_LIMIT``).
JS = """() => {
  const slots = '#vp-image, #vp-left, #vp-right';
  const limit = () => {
    const n = (window.gradio_config || {}).max_file_size;
    return typeof n === 'number' ? n : Infinity;
  };
  const typed = (parts, f) => new File(parts, f.name, {type: 'image/x-unchecked', lastModified: f.lastModified});
  const unchecked = f => f.size > limit() ? typed(['OVER_LIMIT' + f.size], f)
    : f.type.startsWith('image/') ? f : typed([f], f);
  const retyped = files => {
    const list = new DataTransfer();
    Array.from(files, unchecked).forEach(f => list.items.add(f));
    return list;
  };
  const plain = files => Array.from(files || []).every(f => f.type.startsWith('image/') && f.size <= limit());
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
}""".replace("OVER_LIMIT", OVER_LIMIT.decode("ascii"))


def _theme() -> Any:
    gr = _gradio()

    return gr.themes.Default(primary_hue="indigo", font=list(_FONTS), font_mono=list(_MONO_FONTS))


def _theme_at_launch() -> bool:
    """Gradio 6 takes ``theme`` and ``css`` in ``launch()``; Gradio 5 in ``Blocks()``."""
    gr = _gradio()

    return "theme" in inspect.signature(gr.Blocks.launch).parameters


def launch_options(
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_concurrent: int = DEFAULT_MAX_CONCURRENT
) -> dict[str, Any]:
    """Keyword arguments for ``app.launch()``: Gradio's own upload limit, threads enough for ``max_concurrent``
    requests at once (each holds one while it runs) and the quick events beside them, and the theme on Gradio 6."""
    options: dict[str, Any] = {"max_file_size": max_upload_bytes, "max_threads": max(40, 2 * max_concurrent + 8)}
    if _theme_at_launch():
        options.update(theme=_theme(), css=CSS, js=JS)
    return options


def _unread(component: Any, slot: str, max_upload_bytes: int) -> Any:
    """``component`` (the upload ``slot``) hands its image to the callbacks undecoded: a file's path, a
    ``data:`` URL's bytes, or what is wrong with it (:func:`~visprog.apps.webapp_uploads.upload_value`).

    Gradio's own image upload opens the file first, and decodes a ``data:`` URL
    whatever its size, and fails with its own error on what is not an image;
    the handlers read it instead, within the limits
    (:func:`~visprog.apps.webapp_uploads.load_uploads`), and say what is wrong.
    """

    def preprocess(payload: Any) -> Any:
        return upload_value(payload, slot, max_upload_bytes=max_upload_bytes)

    component.preprocess = preprocess
    return component


#: What a request whose image Gradio refused before the handlers (a file it did not receive, a malformed one) gets.
_BAD_FILE = "An image cannot be used"
_NOT_UPLOADED = (
    "The request names a file this app did not receive as an upload. Upload the image (or send it as a base64 "
    "data: URL) and try again."
)
_MALFORMED = "The request's image is not a file Gradio can take: send a file upload or a base64 data: URL."


def _own_words(app: Any) -> Any:
    """Gradio's refusals of a request's files, made before any handler runs, come back in the app's words."""
    gr = _gradio()
    import pydantic
    from gradio.exceptions import InvalidPathError

    preprocess = app.preprocess_data

    async def preprocess_data(*args: Any, **kwargs: Any) -> Any:
        try:
            return await preprocess(*args, **kwargs)
        except InvalidPathError:
            raise gr.Error(_NOT_UPLOADED, title=_BAD_FILE) from None
        except pydantic.ValidationError:
            raise gr.Error(_MALFORMED, title=_BAD_FILE) from None

    app.preprocess_data = preprocess_data
    return app


def build_app(
    *,
    planner_factory: Callable[[], Planner] | None = None,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int | None = None,
    trace_files: TraceFiles | None = None,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
) -> gradio.Blocks:
    """The VisProg web app as a :class:`gradio.Blocks` (launch it with ``launch_options()``).

    ``planner_factory`` returns the :class:`~visprog.planner.core.Planner`
    (default :func:`visprog.solving.create_planner` with ``registry``); it is
    called on the first "Plan and run", not here. ``registry`` and
    ``runtime`` are what "Run edited program" checks and runs with (planned
    programs are checked with the planner's registry); every program runs on
    one batcher with ``runtime``'s models. ``max_upload_bytes`` caps each
    uploaded file; ``max_pixels`` each image's width x height (default
    :func:`visprog.running.images.max_pixels`). ``max_concurrent`` requests
    are served at once, each within ``request_timeout`` seconds (None: no
    limit). ``trace_files`` writes the traces offered for download (default:
    in a new temporary folder).
    """
    gr = _gradio()

    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
    runs = Requests(registry, runtime, max_concurrent=max_concurrent, timeout=request_timeout)

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
        """Run ``work`` and yield the outputs as its events arrive, then its outcome; ``box`` updates the program.

        Past the time limit the request ends with what it had run (the worker is left to end on its own)."""
        with runs.serve():
            yield (*started(view), *box(None))
            events = stream(work, runs.timeout)
            shown = None
            for _ in follow(events, view):
                program = view.program if view.program != shown else None
                shown = view.program
                yield (*progress(view), *box(program))
            outcome = None if events.timed_out else events.result
            if outcome is None or outcome.over_time:
                limit = f" of {runs.timeout:g} s" if runs.timeout is not None else ""
                trace = view.partial_trace(f"stopped: over the time limit{limit}")
                task = outcome.task if outcome is not None else None
                outcome = over_time(runs.timeout, trace, text, task=task, program=view.program)
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
                samples=count,
                on_event=on_event,
                runner=runs.batcher,
                timeout=runs.timeout,
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
                source,
                image,
                left,
                right,
                registry=registry,
                on_event=on_event,
                runner=runs.batcher,
                timeout=runs.timeout,
                **limits,
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
        """A request of this page is on its way: both run buttons off, the status says whether it waits its turn."""
        off = gr.update(interactive=False)
        return (pending or 0) + 1, off, off, LiveView(runs.waiting_line()).status_html()

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
            ),
            label,
            max_upload_bytes,
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
        queued: dict[str, Any] = {
            "concurrency_id": "visprog-run",
            "concurrency_limit": max_concurrent,
            "show_progress": "hidden",
        }
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
    return _own_words(app)


def serve(
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    **kwargs: Any,
) -> None:
    """Build the app (``kwargs`` go to :func:`build_app`) and serve it on ``host:port`` until interrupted."""
    app = build_app(max_upload_bytes=max_upload_bytes, max_concurrent=max_concurrent, **kwargs)
    options = launch_options(max_upload_bytes, max_concurrent)
    app.launch(server_name=host, server_port=port, share=False, **options)
