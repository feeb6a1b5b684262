"""``visprog eval`` plans the next chunk while one runs: the same records as planning a chunk only after
the one before it ran, in the same order, with outages, interruptions and resuming as before.

The planner's server answers by the item's text (requests of two chunks may be on their way in any
order); the modules are ``tests/fakes.py`` stand-ins. An interpreter wrapper notes, for each chunk's
run, which LLM requests came in while it ran.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from tests import fakes
from tests.servers import clean_llm_env, serve_keyed
from visprog.errors import ServiceError
from visprog.evaluation.datasets import Item, load_items
from visprog.evaluation.engines import local_chunks
from visprog.evaluation.runner import evaluate, plan_chunk, process_chunk
from visprog.evaluation.summary import Summary
from visprog.llm import TransformersClient, client_from_options
from visprog.planner.core import Planner
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import RunCache
from visprog.running.tracing import Trace


def _vqa(question: str) -> str:
    return f"ANSWER0=Vqa(image=IMAGE, question='{question}')\nFINAL_RESULT=Result(var=ANSWER0)"


# (item text, LLM reply, expected answer): 11 items, in chunks of 3: four chunks, the last of two items
_ITEMS: list[tuple[str, str, str]] = [
    *[(f"Q{i:02d} what?", _vqa(f"Region {i}?"), f"answer {i}") for i in range(8)],
    ("Q08 wrong?", _vqa("Region 8?"), "something else"),  # wrong_answer
    ("Q09 teleport?", "ANSWER0=Teleport(image=IMAGE, where='moon')\nFINAL_RESULT=Result(var=ANSWER0)", "x"),
    ("Q10 garbage?", "I am sorry ((( => not @@ a program", "y"),  # plan_parse
]
REPLIES = {text: reply for text, reply, _ in _ITEMS}
FAILING: dict[str, int] = {}
SLOW = {"seconds": 0.0}
IN_FLIGHT = {"now": 0, "most": 0}
CHUNK = 3


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    clean_llm_env(monkeypatch, tmp_path / "visprog-cache")
    fakes.reset()
    fakes.VQA_ANSWERS.update({f"Region {i}?": f"answer {i}" for i in range(9)})
    FAILING.clear()
    SLOW["seconds"] = 0.0
    IN_FLIGHT.update(now=0, most=0)
    yield
    fakes.reset()
    FAILING.clear()
    SLOW["seconds"] = 0.0


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    with serve_keyed(REPLIES, failing=FAILING, slow=SLOW, in_flight=IN_FLIGHT) as (url, asked):
        yield url, asked


@pytest.fixture
def items(tmp_path: Path) -> list[Item]:
    from skimage import data

    images = tmp_path / "images"
    images.mkdir()
    PILImage.fromarray(data.coffee()).resize((64, 48)).save(images / "coffee.png")
    path = tmp_path / "items.jsonl"
    rows = [
        {"id": f"i{k:02d}", "image": "coffee.png", "question": q, "answer": a} for k, (q, _, a) in enumerate(_ITEMS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_items(path, "gqa", images=images)


def _planner(url: str) -> Planner:
    backend = client_from_options(base_url=url, model="tiny", max_retries=0, timeout=5)
    return Planner(backend, registry=fakes.registry(), cache=False, repair_rounds=0)


class _Watch:
    """An interpreter that notes, per chunk, the LLM requests that came in while the chunk ran.

    With ``wait``, each run also waits (up to 5 s) for a request to come in while it runs: with
    planning ahead, the next chunk's first request does. (The last chunk of ``_ITEMS`` has no valid
    program: it never runs.)
    """

    def __init__(self, asked: list[str], *, wait: bool = False, stop_at: int | None = None) -> None:
        self.inner = Interpreter(fakes.registry(), max_batch=4)
        self.asked = asked
        self.wait = wait
        self.stop_at = stop_at  # raise KeyboardInterrupt in this chunk's run (0-based)
        self.during: list[list[str]] = []
        self.threads: set[str] = set()

    def run(self, program: Any, inputs: Mapping[str, Any], *, cache: RunCache | None = None) -> Trace:
        return self.inner.run(program, inputs, cache=cache)  # not used: the runner prefers run_many

    def run_many(self, jobs: Sequence[tuple[Any, Mapping[str, Any]]]) -> list[Any]:
        self.threads.add(threading.current_thread().name)
        before = len(self.asked)
        results = self.inner.run_many(jobs)
        if self.stop_at == len(self.during):
            raise KeyboardInterrupt
        deadline = time.monotonic() + 5
        while self.wait and len(self.asked) == before and time.monotonic() < deadline:
            time.sleep(0.005)
        self.during.append(list(self.asked[before:]))
        return results


def _comparable(path: Path) -> list[dict[str, Any]]:
    """The records without their timings."""
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        for key in ("timings", "load_seconds", "plan_seconds", "run_seconds", "seconds"):
            rec.pop(key)
        out.append(rec)
    return out


def _counts(s: Summary) -> tuple[int, int, dict[str, int], int]:
    return s.n, s.correct, s.failures, s.skipped


def _texts(chunk: int) -> list[str]:
    return [text for text, *_ in _ITEMS[chunk * CHUNK : (chunk + 1) * CHUNK]]


@pytest.mark.parametrize("plan_workers", [1, 3])
def test_planning_the_next_chunk_while_one_runs_gives_the_same_records(
    plan_workers: int, server: tuple[str, list[str]], items: list[Item], tmp_path: Path
) -> None:
    url, asked = server
    SLOW["seconds"] = 0.02
    options: dict[str, Any] = {"batch_size": CHUNK, "progress": False, "plan_workers": plan_workers}
    plain = _Watch(asked)
    before = evaluate(items, _planner(url), plain, out_path=tmp_path / "plain.jsonl", overlap=False, **options)
    assert plain.during == [[], [], []]  # plan, then run: no request while a chunk runs
    plain_asked = list(asked)
    asked.clear()
    IN_FLIGHT.update(now=0, most=0)

    watch = _Watch(asked, wait=True)
    after = evaluate(items, _planner(url), watch, out_path=tmp_path / "overlap.jsonl", **options)
    # while chunk k ran, chunk k+1's requests were on their way (and only those)
    assert len(watch.during) == 3 and all(watch.during)
    for k, seen in enumerate(watch.during):
        assert set(seen) <= set(_texts(k + 1))
    assert watch.threads == {"MainThread"}  # the modules run here; planning ran in another thread
    assert IN_FLIGHT["most"] <= plan_workers
    assert sorted(asked) == sorted(plain_asked) == sorted(text for text, *_ in _ITEMS)  # each item asked once
    if plan_workers == 1:
        assert asked == plain_asked  # one request after another, in item order

    assert _comparable(tmp_path / "overlap.jsonl") == _comparable(tmp_path / "plain.jsonl")
    assert [r["id"] for r in _comparable(tmp_path / "overlap.jsonl")] == [f"i{k:02d}" for k in range(11)]
    assert _counts(after) == _counts(before) == (11, 8, {"plan_parse": 1, "plan_check": 1, "execution": 0,
                                                         "wrong_answer": 1}, 0)  # fmt: skip


def test_an_outage_stops_the_run_at_the_same_item_and_the_next_chunk_is_not_planned_ahead(
    server: tuple[str, list[str]], items: list[Item], tmp_path: Path
) -> None:
    url, asked = server
    FAILING["Q04 what?"] = 503  # in the second chunk (i03, i04, i05)
    messages, files = [], {}
    for overlap in (False, True):
        asked.clear()
        out = tmp_path / f"outage-{overlap}.jsonl"
        with pytest.raises(ServiceError) as info:
            evaluate(
                items, _planner(url), _Watch(asked), out_path=out, batch_size=CHUNK, progress=False, overlap=overlap
            )
        messages.append(str(info.value).replace(str(out), "OUT"))
        files[overlap] = out
        time.sleep(0.1)  # nothing is planned after the stop, not even late
        assert asked == [*_texts(0), "Q03 what?"]  # the failing request is not in the list
    assert messages[0] == messages[1] and "the LLM stopped answering at item 'i04'" in messages[0]
    assert _comparable(files[True]) == _comparable(files[False])
    assert [r["id"] for r in _comparable(files[True])] == ["i00", "i01", "i02", "i03"]

    FAILING.clear()  # the same call again plans the items without a record, once each
    asked.clear()
    summary = evaluate(items, _planner(url), _Watch(asked), out_path=files[True], batch_size=CHUNK, progress=False)
    assert (summary.n, summary.skipped, summary.evaluated) == (11, 4, 7)
    assert sorted(asked) == sorted(text for text, *_ in _ITEMS[4:])
    reference = tmp_path / "reference.jsonl"
    evaluate(items, _planner(url), _Watch(asked), out_path=reference, batch_size=CHUNK, progress=False, overlap=False)
    assert _comparable(files[True]) == _comparable(reference)  # no duplicates, item order


def test_an_interrupted_run_stops_planning_ahead_and_resumes_without_duplicates(
    server: tuple[str, list[str]], items: list[Item], tmp_path: Path
) -> None:
    url, asked = server
    SLOW["seconds"] = 0.1
    out = tmp_path / "interrupted.jsonl"
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):  # Ctrl+C while the second chunk runs and the third is planned
        evaluate(items, _planner(url), _Watch(asked, stop_at=1), out_path=out, batch_size=CHUNK, progress=False)
    assert time.perf_counter() - started < 2.0  # the planning ahead was not waited for
    assert [r["id"] for r in _comparable(out)] == ["i00", "i01", "i02"]
    time.sleep(0.5)
    assert not set(asked) & set(_texts(3))  # planning stopped within the third chunk: the fourth never asked
    asked.clear()
    SLOW["seconds"] = 0.0
    summary = evaluate(items, _planner(url), _Watch(asked), out_path=out, batch_size=CHUNK, progress=False)
    assert (summary.n, summary.skipped, summary.evaluated, summary.correct) == (11, 3, 8, 8)
    assert sorted(asked) == sorted(text for text, *_ in _ITEMS[3:])
    reference = tmp_path / "reference.jsonl"
    evaluate(items, _planner(url), _Watch(asked), out_path=reference, batch_size=CHUNK, progress=False, overlap=False)
    assert _comparable(out) == _comparable(reference)


class _ScriptedLocal(TransformersClient):
    """A local model (as far as the evaluation can tell) that answers by the item's text without a model,
    noting the thread each reply was generated on."""

    def __init__(self) -> None:
        super().__init__("no-model-loaded")
        self.threads: list[str] = []

    def complete(self, messages: list[Any], **options: Any) -> list[str]:
        self.threads.append(threading.current_thread().name)
        last = str(messages[-1]["content"])
        return [next(reply for text, reply in REPLIES.items() if text in last)]


def test_a_local_model_plans_and_runs_one_after_the_other(items: list[Item], tmp_path: Path) -> None:
    backend = _ScriptedLocal()
    planner = Planner(backend, registry=fakes.registry(), cache=False, repair_rounds=0)
    watch = _Watch(backend.threads)
    summary = evaluate(items, planner, watch, out_path=tmp_path / "local.jsonl", batch_size=CHUNK, progress=False)
    assert summary.correct == 8
    assert set(backend.threads) == {"MainThread"} and len(backend.threads) == 11  # no planning in another thread
    assert watch.during == [[], [], []]


def test_the_local_engine_plans_ahead_only_until_planning_stops(
    items: list[Item], server: tuple[str, list[str]]
) -> None:
    url, asked = server
    FAILING["Q01 what?"] = 500
    planner = _planner(url)
    chunks = [items[k : k + CHUNK] for k in range(0, len(items), CHUNK)]
    records = local_chunks(chunks, process_chunk, planner, _Watch(asked), plan=plan_chunk)
    first = next(records)
    assert [r["id"] for r in first] == ["i00", "i01"] and "_aborted" in first[1]
    with pytest.raises(StopIteration):  # no chunk after the one whose planning stopped
        next(records)
    assert asked == ["Q00 what?"]


def test_the_benchmark_runs_and_prints_its_rows(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_eval_overlap

    out = bench_eval_overlap.main(["--quick"])
    assert out in capsys.readouterr().out
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith(("| measurement", "| ---"))
    ]
    assert [r[0] for r in rows] == [
        "setup",
        "plan, then run (`--no-overlap`), items/s",
        "next chunk planned while one runs, items/s",
        "speed-up overlap vs. plan, then run",
        "records the same (timings aside)",
    ]
    assert rows[0][1].startswith("32 items in chunks of 16; LLM reply after 20 ms, 8 at a time")
    assert float(rows[1][1]) > 0 and float(rows[2][1]) > 0
    assert rows[3][1].endswith("x") and rows[3][2] == "≥ 1.8x" and rows[3][3] in {"yes", "no"}
    assert rows[4][1:] == ["yes", "yes", "yes"]
