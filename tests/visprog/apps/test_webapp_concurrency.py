"""Several users at once: the web app over HTTP (gradio_client), a slow LLM for one user, and time limits.

One LLM server here dribbles its answer (a byte every 0.2 s, as one once held
every user of the app for over 90 s); while it holds user A's plan, user B's
run must finish at once. Beyond ``max_concurrent`` requests wait; a request
past its time limit ends with a message and the steps it had run.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from tests import fakes
from tests.servers import clean_llm_env, dribbling
from visprog.apps.webapp_actions import plan_and_run, run_program
from visprog.apps.webapp_live import LiveView
from visprog.apps.webapp_runs import Requests
from visprog.language.signatures import module
from visprog.language.values import Image
from visprog.llm import client_from_options
from visprog.planner.core import Planner
from visprog.planner.scripted import scripted_planner
from visprog.running.events import RunStarted, StepFinished, StepStarted, stream
from visprog.running.runtime import Runtime

# Gradio's own queue code warns under recent pandas; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:::gradio")

#: The app's time limit for one request, in seconds.
LIMIT = 5.0
#: Seconds the slow step of NAPPING sleeps (past LIMIT).
NAP = 6.5
QUICK = "ANSWER0=Eval(expr='2 + 3')\nFINAL_RESULT=Result(var=ANSWER0)"
NAPPING = "ANSWER0=Eval(expr='2 + 3')\nIMAGE0=Nap(image=IMAGE)\nFINAL_RESULT=Result(var=IMAGE0)"


@module()
def Nap(image: Image) -> Image:
    """The image, after a long pause (a step that runs past the time limit).

    Args:
        image: the image to return.
    """
    time.sleep(NAP)
    return image


@dataclass
class App:
    url: str
    arrived: list[float]  # when each request reached the dribbling LLM
    picture: str


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The app with a planner whose LLM dribbles, at most 2 requests at once, each within LIMIT seconds."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'visprog[web]')")
    from visprog.apps.webapp import build_app, launch_options

    folder = tmp_path_factory.mktemp("concurrency")
    picture = folder / "small.png"
    PILImage.new("RGB", (64, 48), "white").save(picture)
    registry = fakes.registry()
    registry.register_all([Nap], source="tests")
    with pytest.MonkeyPatch.context() as mp, dribbling(0.2, 30) as (llm, arrived):
        clean_llm_env(mp, folder / "cache")
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.setenv("GRADIO_TEMP_DIR", str(folder / "gradio"))
        backend = client_from_options(base_url=llm, model="tiny", max_retries=0, timeout=60)
        planner = Planner(backend, registry=registry, cache=False)
        web = build_app(
            planner_factory=lambda: planner,
            registry=registry,
            runtime=Runtime(device_request="cpu", progress=False),
            max_concurrent=2,
            request_timeout=LIMIT,
        )
        web.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **launch_options(max_concurrent=2))
        try:
            yield App(str(web.local_url), arrived, str(picture))
        finally:
            web.close()


def _client(app: App) -> Any:
    from gradio_client import Client

    return Client(app.url, verbose=False, download_files=False)


def _plan(client: Any, app: App) -> Any:
    """User A asks for a plan: its LLM request dribbles."""
    from gradio_client import handle_file

    return client.submit("How many cats?", "gqa", 1, handle_file(app.picture), None, None, 0, api_name="/on_plan")


def _run(client: Any, app: App, program: str) -> Any:
    from gradio_client import handle_file

    return client.submit(program, 0, handle_file(app.picture), None, None, api_name="/on_run")


def _wait_for_llm(app: App, requests: int) -> None:
    end = time.monotonic() + 20
    while len(app.arrived) < requests:
        assert time.monotonic() < end, "the plan request never reached the LLM"
        time.sleep(0.05)


def test_a_dribbling_llm_reply_holds_up_no_other_user(app: App) -> None:
    a, b = _client(app), _client(app)
    start = time.monotonic()
    planning = _plan(a, app)
    _wait_for_llm(app, len(app.arrived) + 1)
    t0 = time.monotonic()
    status, *_ = _run(b, app, QUICK).result(timeout=30)
    took = time.monotonic() - t0
    assert "Done (edited program)" in status
    assert took < 2.0, f"user B waited {took:.1f} s for user A's plan"
    assert not planning.done()  # A's plan still waits for the LLM
    status, *_ = planning.result(timeout=30)
    assert f"Stopped: over the time limit of {LIMIT:g} s" in status
    assert "planning and running (visprog serve --request-timeout sets it)" in status
    assert time.monotonic() - start < LIMIT + 2.5  # ended at the limit, not when the LLM gave up


def test_beyond_the_limit_requests_wait_their_turn(app: App) -> None:
    clients = [_client(app) for _ in range(3)]
    before = len(app.arrived)
    t0 = time.monotonic()
    plans = [_plan(c, app) for c in clients[:2]]
    _wait_for_llm(app, before + 2)
    status, *_ = _run(clients[2], app, QUICK).result(timeout=30)
    assert "Done (edited program)" in status
    # it waited for a slot: both were held by the dribbling plans until their time limit (measured from when
    # they were sent, so that a slow start on a busy machine does not shorten the wait seen here)
    assert time.monotonic() - t0 > LIMIT - 0.5
    for plan in plans:
        assert "Stopped: over the time limit" in plan.result(timeout=30)[0]


def test_a_run_over_its_time_limit_ends_with_the_message_and_its_partial_trace(app: App) -> None:
    t0 = time.monotonic()
    status, _, _, trace, page, data = _run(_client(app), app, NAPPING).result(timeout=30)
    assert time.monotonic() - t0 < LIMIT + 1.5
    assert f"Stopped: over the time limit of {LIMIT:g} s" in status and "vp-error" in status
    assert "The step that finished in time is shown in the trace." in status
    assert "Eval" in trace and "Nap" in trace  # the step that ran, and the program it was part of
    for download in (page, data):  # the partial trace, for download
        assert download["visible"] is True and download["value"] is not None


# --- the parts, without HTTP ------------------------------------------------------------------


@module()
def Doze(image: Image) -> Image:
    """The image, after a pause.

    Args:
        image: the image to return.
    """
    time.sleep(1.5)
    return image


def test_the_handlers_end_at_their_timeout(tmp_path: Path) -> None:
    picture = tmp_path / "small.png"
    PILImage.new("RGB", (8, 8)).save(picture)
    registry = fakes.registry()
    registry.register_all([Doze], source="tests")
    program = NAPPING.replace("Nap(", "Doze(")
    t0 = time.monotonic()
    out = run_program(program, str(picture), registry=registry, timeout=0.5)
    assert time.monotonic() - t0 < 1.2
    assert (out.ok, out.over_time, out.title) == (False, True, "Stopped: over the time limit of 0.5 s")
    assert out.message.startswith("A request may take at most 0.5 s, planning and running")
    planner = scripted_planner([program], registry=registry)
    out = plan_and_run("Doze", "gqa", str(picture), planner=planner, timeout=0.5)
    assert out.over_time and out.program == program  # the planned program, to run again
    assert "The program is in the program box" in out.message
    done = run_program(program, str(picture), registry=registry, timeout=5)
    assert done.ok and not done.over_time


def test_bounded_work_ends_at_its_limit_and_keeps_its_events() -> None:
    release = threading.Event()

    def slow(on_event: Any) -> str:
        on_event(RunStarted(0, "A=1", 1))
        release.wait(10)
        return "late"

    events = stream(slow, 0.3)
    t0 = time.monotonic()
    seen = [e.kind for e in events]
    assert 0.25 < time.monotonic() - t0 < 2.0
    assert events.timed_out and seen == ["run_started"]
    release.set()
    quick = stream(lambda on_event: "done", 5.0)
    assert list(quick) == [] and not quick.timed_out and quick.result == "done"
    unbounded = stream(lambda on_event: 7, None)
    assert list(unbounded) == [] and unbounded.result == 7

    def broken(on_event: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(stream(broken, 5.0))
    with pytest.raises(ValueError, match="positive"):
        stream(slow, 0)


def test_the_status_says_when_a_request_waits_for_a_slot() -> None:
    runs = Requests(max_concurrent=2, timeout=10)
    assert runs.waiting_line() == "Queued: it starts in a moment"
    with runs.serve():
        assert runs.serving == 1 and runs.waiting_line() == "Queued: it starts in a moment"
        with runs.serve():
            line = runs.waiting_line()
    assert line == (
        "Queued: 2 requests are being served, the most this server serves at once (2); "
        "yours starts when one of them ends"
    )
    assert runs.serving == 0
    for wrong in ({"max_concurrent": 0}, {"max_concurrent": True}, {"timeout": 0}, {"timeout": -1.0}):
        with pytest.raises(ValueError):
            Requests(**wrong)


def test_the_live_view_keeps_the_steps_that_finished_as_a_trace() -> None:
    view = LiveView()
    assert view.partial_trace("stopped") is None
    program = "A=Eval(expr='1')\nB=Eval(expr='2')"
    for event in (
        RunStarted(0, program, 2),
        StepStarted(0, 0, 2, "A", "Eval", 1),
        StepFinished(0, 0, 2, "A", "Eval", 1, 1, 0.01),
        StepStarted(0, 1, 2, "B", "Eval", 2),
    ):
        view.add(event)
    trace = view.partial_trace("stopped: over the time limit of 3 s")
    assert trace is not None and trace.source == program and not trace.ok
    assert [(r.target, r.output, r.source) for r in trace.records] == [("A", 1, "A=Eval(expr='1')")]
    assert trace.error == "stopped: over the time limit of 3 s"
    assert "run failed: stopped: over the time limit of 3 s" in trace.to_text()


def test_serve_takes_the_concurrency_and_the_time_limit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import visprog.apps.webapp
    from visprog.apps.cli import main

    def cli(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        return main(list(argv), out=out, err=err), out.getvalue(), err.getvalue()

    seen: dict[str, object] = {}
    monkeypatch.setattr(visprog.apps.webapp, "serve", lambda host, port, **kwargs: seen.update(kwargs))
    code, _, _ = cli("serve", "--port", "7999", "--max-concurrent", "8", "--request-timeout", "42.5")
    assert code == 0 and seen["max_concurrent"] == 8 and seen["request_timeout"] == 42.5
    code, _, _ = cli("serve", "--port", "7999")
    assert code == 0 and seen["max_concurrent"] == 4 and seen["request_timeout"] == 300.0
    for option in ("--max-concurrent", "--request-timeout"):
        with pytest.raises(SystemExit) as usage:
            cli("serve", option, "0")
        assert usage.value.code == 2
        assert f"argument {option}: must be " in capsys.readouterr().err


def test_the_queued_events_share_the_concurrency_limit() -> None:
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'visprog[web]')")
    from visprog.apps.webapp import build_app, launch_options

    web = build_app(registry=fakes.registry(), max_concurrent=3, request_timeout=60)
    limits = {(f.concurrency_id, f.concurrency_limit) for f in web.fns.values() if f.name in ("on_plan", "on_run")}
    assert limits == {("visprog-run", 3)}
    assert launch_options(max_concurrent=30)["max_threads"] >= 2 * 30
