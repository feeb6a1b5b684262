"""One plan cache file written by several processes at once: OS processes, then the Ray actors of ``visprog eval``.

The processes are spawned (a fresh interpreter each, as Ray workers are) and
start together on a file that does not exist yet, so they also race to create
it. The Ray run has the plan cache on, in a folder of its own that the actors
learn from ``VISPROG_CACHE_DIR``; its server answers by the question in the
request (actors plan concurrently, so replies cannot depend on request order).
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import traceback
import warnings
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.llm_server import ScriptedServer
from tests.servers import serve_keyed
from visprog.planner import cache as cache_module
from visprog.planner.cache import PlanCache

PROCESSES = 4
ROUNDS = 50
#: keys every process writes, each with the same program
SHARED = 10


def _program(question: str) -> str:
    return f"ANSWER0=Vqa(image=IMAGE, question='{question}')\nFINAL_RESULT=Result(var=ANSWER0)"


def _own(index: int, j: int) -> tuple[str, str]:
    return PlanCache.key("own", str(index), str(j)), _program(f"process {index}, question {j}?")


def _shared(j: int) -> tuple[str, str]:
    return PlanCache.key("shared", str(j % SHARED)), _program(f"shared question {j % SHARED}?")


def _hammer(index: int, path: str, barrier: Any, results: Any) -> None:
    """One spawned process: ``ROUNDS`` rounds of puts and gets, own keys and shared ones; reports what went wrong."""
    problems: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # the cache turns its failures into warnings: every one counts
            cache = PlanCache(path)
            barrier.wait(timeout=60)  # all at once, on a file that does not exist yet
            if index % 2 == 0 and cache.get(_own(index, 0)[0]) is not None:  # half create it reading, half writing
                problems.append("a key was found before it was written")
            for j in range(ROUNDS):
                key, program = _own(index, j)
                cache.put(key, program)
                shared_key, shared_program = _shared(j)
                cache.put(shared_key, shared_program)
                if (got := cache.get(key)) != program:
                    problems.append(f"own key {j}: read {got!r}")
                if (got := cache.get(shared_key)) != shared_program:
                    problems.append(f"shared key {j % SHARED}: read {got!r}")
                other_key, other_program = _own((index + 1) % PROCESSES, j)
                if (got := cache.get(other_key)) not in (None, other_program):  # not written yet, or whole
                    problems.append(f"another process's key {j}: read {got!r}")
        problems.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    except BaseException:  # report everything, even KeyboardInterrupt: the parent asserts on the list
        problems.append(traceback.format_exc())
    results.put((index, problems))


def test_processes_hammer_one_new_cache_file(tmp_path: Path) -> None:
    path = tmp_path / "new folder" / "plans.sqlite"  # neither the folder nor the file exists yet
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(i, str(path), barrier, results), daemon=True) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    try:
        reports = dict(results.get(timeout=120) for _ in procs)  # read before join: the queue must drain
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert reports == {i: [] for i in range(PROCESSES)}  # no exception, no cache warning, every read right
    assert [p.exitcode for p in procs] == [0] * PROCESSES

    cache = PlanCache(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(PROCESSES):
            for j in range(ROUNDS):
                key, program = _own(i, j)
                assert cache.get(key) == program
        for j in range(SHARED):
            key, program = _shared(j)
            assert cache.get(key) == program
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT COUNT(*) FROM plans").fetchone() == (PROCESSES * ROUNDS + SHARED,)


def test_a_locked_cache_is_a_miss_and_a_skipped_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llm_server: ScriptedServer
) -> None:
    from tests import fakes
    from visprog.llm import client_from_options
    from visprog.planner.core import Planner

    path = tmp_path / "plans.sqlite"
    stored = _program("stored?")
    PlanCache(path).put("stored", stored)
    monkeypatch.setattr(cache_module, "_BUSY_TIMEOUT", 0.2)
    cache = PlanCache(path)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a long write, as far as SQLite knows
        llm_server.script([_program("What is it?")])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert cache.get("stored") is None  # a miss, not an error
            cache.put("skipped", stored)  # a skipped write, not an error
            backend = client_from_options(base_url=llm_server.url, model="tiny", max_retries=0, timeout=5)
            plan = Planner(backend, registry=fakes.registry(), cache=cache).plan("gqa", "What is it?")
        assert plan.program == _program("What is it?") and not plan.cached and len(llm_server.requests) == 1
        about_cache = [str(w.message) for w in caught if "plan cache" in str(w.message)]
        assert len(about_cache) == 1 and "stayed locked" in about_cache[0]  # once per instance
        assert "Delete the file" not in about_cache[0]  # a busy file is not a broken one
    finally:
        holder.rollback()
        holder.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get("stored") == stored  # the lock is gone: the same instance works again
        assert cache.get("skipped") is None
        cache.put("skipped", stored)
        assert cache.get("skipped") == stored


# -- Ray actors --------------------------------------------------------------------------------------------

#: item text -> the planner's reply; every question asked twice (ids q0..q5 and again as q6..q11)
QUESTIONS = {f"Q{k} what is in region {k}?": _program(f"What is in region {k}?") for k in range(6)}




@pytest.fixture(scope="module")
def ray_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The actors' ``VISPROG_CACHE_DIR``, in the environment Ray gives its workers (as a shell's would be)."""
    return tmp_path_factory.mktemp("ray-plan-cache")


@pytest.fixture(scope="module")
def local_ray(ray_cache_dir: Path) -> Iterator[Any]:
    """Local Ray for 3 CPU actors, started once for this file (no dashboard, no log forwarding)."""
    ray = pytest.importorskip("ray", reason="the ray engine needs Ray (pip install 'visprog[ray]')")
    root = str(Path(__file__).resolve().parents[3])  # the actors import tests.fakes
    env = {"PYTHONPATH": root, "NO_PROXY": "127.0.0.1,localhost", "VISPROG_CACHE_DIR": str(ray_cache_dir)}
    # no ignore_reinit_error: actors of a Ray started elsewhere would not have this VISPROG_CACHE_DIR
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


def _records(path: Path) -> list[dict[str, Any]]:
    """The records without their timings."""
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        for key in ("timings", "load_seconds", "plan_seconds", "run_seconds", "seconds"):
            rec.pop(key)
        out.append(rec)
    return out


def test_ray_actors_share_one_plan_cache(
    tmp_path: Path, local_ray: Any, ray_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image as PILImage

    from visprog.evaluation.datasets import load_items
    from visprog.evaluation.engines import WorkerSettings
    from visprog.evaluation.runner import evaluate

    monkeypatch.setenv("VISPROG_CACHE_DIR", str(ray_cache_dir))  # the driver's cache is the actors' one
    cache_file = ray_cache_dir / "plans.sqlite"
    assert not cache_file.exists()  # the actors create it, all at once
    images = tmp_path / "images"
    images.mkdir()
    for n, color in enumerate(("red", "green", "blue")):
        PILImage.new("RGB", (32, 24), color).save(images / f"{n}.png")
    texts = list(QUESTIONS) * 2
    data = tmp_path / "gqa.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "image": f"{i % 3}.png", "question": text, "answer": "yes"}) + "\n"
            for i, text in enumerate(texts)
        )
    )
    items = load_items(data, "gqa", images=images)
    planner_options = {"base_url": "", "model": "tiny", "max_retries": 0, "timeout": 5, "repair_rounds": 0}

    def run(url: str, out: Path) -> Any:
        settings = WorkerSettings(
            planner={**planner_options, "base_url": url, "cache": True},
            device="cpu",
            registry="tests.fakes:registry",
            max_batch=4,
        )
        planner, interpreter = settings.build()  # not used by the ray engine
        common: dict[str, Any] = {"engine": "ray", "workers": 3, "settings": settings, "batch_size": 1}
        return evaluate(items, planner, interpreter, out_path=out, progress=False, **common)

    with serve_keyed(QUESTIONS) as (url, asked):  # one server for both runs: its address is part of every plan's key
        first = run(url, tmp_path / "first.jsonl")
        assert (first.n, first.correct) == (12, 12)  # every item planned and answered ('yes' is the fake's answer)
        assert set(asked) == set(QUESTIONS) and len(asked) <= len(texts)  # a question asked twice at once: both plan
        with closing(sqlite3.connect(cache_file)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            programs = sorted(row[0] for row in conn.execute("SELECT program FROM plans"))
        assert programs == sorted(QUESTIONS.values())  # one plan per distinct question

        asked.clear()
        second = run(url, tmp_path / "second.jsonl")  # new actors, the same data
        assert asked == []  # every plan came from the cache
    assert _records(tmp_path / "second.jsonl") == _records(tmp_path / "first.jsonl")
    assert (second.n, second.correct, second.failures) == (first.n, first.correct, first.failures)
