"""An evaluation is never poisoned: one item's error is its record, and the output file fails cleanly.

An error inside one item (its planning raises, its program's run raises, the batch of its chunk
raises) is that item's failure, written to its record as the other items' are, so that a resume never
stops at the same place again. The output file is locked while an evaluation writes it (a second one
stops at once), and a folder, a read-only disk or a full one is one :class:`ResultsError` that keeps
every record already written.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from tests import fakes
from tests.servers import clean_llm_env, serve_keyed
from visprog.evaluation.datasets import Item, load_items
from visprog.evaluation.results import ResultsError, ResultsFile
from visprog.evaluation.runner import evaluate
from visprog.evaluation.summary import Summary
from visprog.llm import client_from_options
from visprog.planner.core import Plan, Planner, PlanningError
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import RunCache
from visprog.running.tracing import Trace

QUESTIONS = [f"Item {i}?" for i in range(6)]
REPLIES = {q: f"ANSWER0=Vqa(image=IMAGE, question='{q}')\nFINAL_RESULT=Result(var=ANSWER0)" for q in QUESTIONS}
SLOW = {"seconds": 0.0}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    clean_llm_env(monkeypatch, tmp_path / "visprog-cache")
    fakes.reset()
    fakes.VQA_ANSWERS.update({q: "cat" for q in QUESTIONS})
    SLOW["seconds"] = 0.0
    yield
    fakes.reset()


@pytest.fixture
def items(tmp_path: Path) -> list[Item]:
    PILImage.new("RGB", (32, 24), "gray").save(tmp_path / "cat.png")
    data = tmp_path / "items.jsonl"
    rows = [{"id": f"q{i}", "image": "cat.png", "question": q, "answer": "cat"} for i, q in enumerate(QUESTIONS)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return load_items(data, "gqa")


@pytest.fixture
def url() -> Iterator[str]:
    with serve_keyed(REPLIES, slow=SLOW) as (address, _):
        yield address


class _Choking(Planner):
    """A planner that raises on one question, as on a reply the checker chokes on."""

    def plan_samples(self, task: Any, text: str, n: int, **options: Any) -> list[Plan | PlanningError | Any]:
        if text == QUESTIONS[1]:
            raise RecursionError("maximum recursion depth exceeded while checking the program")
        return super().plan_samples(task, text, n, **options)


def _planner(url: str, kind: type[Planner] = Planner) -> Planner:
    backend = client_from_options(base_url=url, model="tiny", max_retries=0, timeout=5)
    return kind(backend, registry=fakes.registry(), cache=False, repair_rounds=0)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _evaluate(items: Sequence[Item], planner: Planner, out: Path, interpreter: Any = None, **options: Any) -> Summary:
    interpreter = interpreter or Interpreter(fakes.registry(), max_batch=4)
    return evaluate(items, planner, interpreter, out_path=out, progress=False, batch_size=4, **options)


@pytest.mark.parametrize("overlap", [True, False])
def test_an_item_whose_planning_raises_is_its_failure_and_the_run_goes_on(
    overlap: bool, items: list[Item], url: str, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    summary = _evaluate(items, _planner(url, _Choking), out, overlap=overlap)
    records = _records(out)
    assert [r["id"] for r in records] == [f"q{i}" for i in range(6)]  # every record, in order, once
    bad = records[1]
    assert bad["failure"] == "plan_check" and bad["correct"] is False and bad["program"] is None
    assert bad["error"] == (
        "planning the item raised an unexpected error: RecursionError: "
        "maximum recursion depth exceeded while checking the program"
    )
    assert (summary.n, summary.correct, summary.failures["plan_check"]) == (6, 5, 1)
    again = _evaluate(items, _planner(url, _Choking), out)  # resuming does not stop at the same place
    assert (again.n, again.skipped, again.evaluated) == (6, 6, 0)


class _RunRaises:
    """An interpreter whose batch raises, and whose run raises for one program (errors outside any module)."""

    def __init__(self) -> None:
        self.inner = Interpreter(fakes.registry())

    def run_many(self, jobs: Sequence[Any]) -> list[Any]:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def run(self, program: Any, inputs: Mapping[str, Any], *, cache: RunCache | None = None) -> Trace:
        if QUESTIONS[2] in program.program.source:
            raise KeyError("a key the interpreter lost")
        return self.inner.run(program, inputs, cache=cache)


def test_a_batch_that_raises_runs_program_by_program_and_only_the_one_at_fault_fails(
    items: list[Item], url: str, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    summary = _evaluate(items, _planner(url), out, interpreter=_RunRaises())
    records = {r["id"]: r for r in _records(out)}
    assert sorted(records) == [f"q{i}" for i in range(6)]
    assert records["q2"]["failure"] == "execution"
    assert (
        records["q2"]["error"]
        == "running the program raised an unexpected error: KeyError: 'a key the interpreter lost'"
    )
    assert (summary.correct, summary.failures["execution"]) == (5, 1)


def test_a_second_evaluation_of_the_same_file_stops_at_once(items: list[Item], url: str, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    SLOW["seconds"] = 0.2  # the first evaluation takes a while
    first: dict[str, Any] = {}

    def run_first() -> None:
        try:
            first["summary"] = _evaluate(items, _planner(url), out, overlap=False)
        except Exception as e:  # reported by the assertions below
            first["error"] = e

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        while not out.exists():  # the first one made (and locked) the file
            time.sleep(0.01)
        with pytest.raises(ResultsError) as info:
            _evaluate(items, _planner(url), out)
    finally:
        thread.join(timeout=30)
    assert str(info.value) == (
        f"{out} is in use by another evaluation (it holds the file's lock): "
        "wait for it to end, or write this one to another file (-o)"
    )
    assert "error" not in first and first["summary"].evaluated == 6
    assert [r["id"] for r in _records(out)] == [f"q{i}" for i in range(6)]  # each record once
    again = _evaluate(items, _planner(url), out)  # the lock ended with the first evaluation
    assert again.skipped == 6


def test_the_lock_holds_across_processes(items: list[Item], url: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "results.jsonl"
    code = (
        "import sys\nfrom visprog.evaluation.results import ResultsFile\n"
        "with ResultsFile(sys.argv[1]):\n    print('locked', flush=True)\n    sys.stdin.read()\n"
    )
    root = Path(__file__).resolve().parents[3]
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(ResultsError, match="in use by another evaluation"):
            _evaluate(items, _planner(url), out)
    finally:
        holder.communicate("", timeout=30)
    assert out.read_text() == ""
    assert _evaluate(items, _planner(url), out).evaluated == 6


def _failing_os(
    monkeypatch: pytest.MonkeyPatch, target: Path, *, open_error: int | None = None, write_after: int | None = None
) -> None:
    """Make the system refuse ``target`` as a read-only disk (``open_error``) or fill up after ``write_after``
    bytes (a short write first, then ENOSPC), as the kernel does; other files are left alone."""
    real_open, real_write = os.open, os.write
    state = {"written": 0}

    def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if open_error is not None and Path(path) == target:
            raise OSError(open_error, os.strerror(open_error), str(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_write(fd: int, data: Any) -> int:
        if write_after is None or not target.exists() or not _same_inode(fd, target):
            return real_write(fd, data)
        room = write_after - state["written"]
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(data)[:room])
        state["written"] += n
        return n

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "write", fake_write)


def _same_inode(fd: int, path: Path) -> bool:
    a, b = os.fstat(fd), os.stat(path)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_disk_is_one_error_before_planning_and_the_file_is_kept(
    code: int, items: list[Item], url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "results.jsonl"
    _evaluate(items[:2], _planner(url), out)
    before = out.read_bytes()
    _failing_os(monkeypatch, out, open_error=code)
    with serve_keyed(REPLIES) as (other, asked):
        with pytest.raises(ResultsError) as info:
            _evaluate(items, _planner(other), out)
    assert str(info.value) == f"cannot write the records to {out}: {os.strerror(code)}"
    assert asked == [] and out.read_bytes() == before


def test_a_full_disk_is_one_error_keeping_every_record_and_the_run_resumes(
    items: list[Item], url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "results.jsonl"
    _evaluate(items[:1], _planner(url), out)
    one = out.stat().st_size
    _failing_os(monkeypatch, out, write_after=one + one // 2)  # room for one more record and a half
    with pytest.raises(ResultsError) as info:
        _evaluate(items, _planner(url), out)
    assert str(info.value) == (
        f"cannot write to {out}: {os.strerror(errno.ENOSPC)}; the 1 record(s) written before are saved "
        "(with any others the file held): when it can be written again, run the same command to resume"
    )
    lines = out.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines[:2]] == ["q0", "q1"] and not lines[2].endswith("}")  # a cut line
    monkeypatch.undo()  # space is free again
    fakes.VQA_ANSWERS.update({q: "cat" for q in QUESTIONS})
    summary = _evaluate(items, _planner(url), out)
    assert (summary.n, summary.skipped, summary.correct) == (6, 2, 6)
    ids = [r["id"] for r in (json.loads(x) for x in out.read_text().splitlines() if x.endswith("}"))]
    assert ids == [f"q{i}" for i in range(6)]


def test_a_refused_evaluation_leaves_no_empty_file_behind(items: list[Item], url: str, tmp_path: Path) -> None:
    out = tmp_path / "new" / "results.jsonl"
    with pytest.raises(ResultsError, match="in use"):
        with ResultsFile(out):
            with ResultsFile(out):  # a second open of the same file, as by another evaluation
                pass
    assert not out.exists()
    gone = [Item("x", "gqa", "Q?", {"IMAGE": str(tmp_path / "nowhere.png")})]
    with pytest.raises(Exception, match="image was not found"):
        _evaluate(gone, _planner(url), out)
    assert not out.exists() and not out.with_name("results.summary.json").exists()


def test_output_in_a_folder_that_is_a_file_is_one_error(items: list[Item], url: str, tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    with pytest.raises(ResultsError, match=f"cannot make the folder {blocker} for results.jsonl: "):
        _evaluate(items, _planner(url), blocker / "results.jsonl")
