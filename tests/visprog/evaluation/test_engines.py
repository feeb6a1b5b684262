"""The Ray engine of ``visprog eval`` gets exactly the local engine's records and summary.

Local Ray with two CPU actors; the planner's server runs in this process on
127.0.0.1 and answers by the question in the request (actors plan
concurrently, so replies cannot depend on the order of requests). The fake
modules live in the actors' processes: their scripted answers are set by the
registry factory (:func:`registry`), which every process calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from tests import fakes
from tests.servers import clean_llm_env, serve_keyed
from visprog.errors import ConfigError, ServiceError, VisprogError
from visprog.evaluation.datasets import Item, load_items
from visprog.evaluation.engines import WorkerSettings
from visprog.evaluation.runner import evaluate, process_chunk
from visprog.evaluation.summary import Summary
from visprog.language.signatures import module
from visprog.language.values import Image

ray = pytest.importorskip("ray", reason="the ray engine needs Ray (pip install 'visprog[ray]')")

#: The fake Vqa's answers by question, set in every process by :func:`registry`.
ANSWERS = {
    **{f"What is in region {i:02d}?": f"answer {i}" for i in range(4)},
    "Which color?": "The Blue.",
    "Which side?": "left",
    "Left one?": "yes",
    "Right one?": "no",
}


def registry() -> Any:
    """``tests.fakes.registry()`` with this file's scripted answers (called in the actors too)."""
    fakes.VQA_ANSWERS.update(ANSWERS)
    return fakes.registry()


def _vqa(question: str) -> str:
    return f"ANSWER0=Vqa(image=IMAGE, question='{question}')\nFINAL_RESULT=Result(var=ANSWER0)"


def _nlvr(op: str) -> str:
    return (
        "ANSWER0=Vqa(image=LEFT, question='Left one?')\nANSWER1=Vqa(image=RIGHT, question='Right one?')\n"
        f"ANSWER2=Eval(expr='{{ANSWER0}} {op} {{ANSWER1}}')\nFINAL_RESULT=Result(var=ANSWER2)"
    )


# (item text, LLM reply, expected answer): 8 GQA-style items
_GQA = [
    ("Q00 what?", _vqa("What is in region 00?"), "answer 0"),
    ("Q01 what?", _vqa("What is in region 01?"), "answer 1"),
    ("Q02 what?", _vqa("What is in region 02?"), "wrong"),  # wrong_answer
    ("Q03 how many?", _vqa("How many cats are there?"), "two"),  # the fake says '2'
    ("Q04 color?", _vqa("Which color?"), "blue"),  # after normalisation
    ("Q05 side?", _vqa("Which side?"), "right"),  # wrong_answer
    ("Q06 teleport?", "ANSWER0=Teleport(image=IMAGE, where='moon')\nFINAL_RESULT=Result(var=ANSWER0)", "x"),
    ("Q07 garbage?", "I am sorry ((( => not @@ a program", "y"),  # plan_parse
]
# (statement, reply, label, right image): 4 NLVR-style items; left 'yes', right 'no'
_NLVR = [
    ("S0 xor", _nlvr("xor"), True, "coffee.png"),
    ("S1 and", _nlvr("and"), "False", "coffee.png"),
    ("S2 or wrong", _nlvr("or"), "False", "coffee.png"),  # wrong_answer
    ("S3 missing", _nlvr("and"), False, "missing.png"),  # execution: never planned
]
REPLIES: dict[str, str] = {**{t: r for t, r, _ in _GQA}, **{t: r for t, r, _, _ in _NLVR}}
#: Item texts the server answers with an HTTP error status instead (set by a test, in this process only).
FAILING: dict[str, int] = {}
#: How long the server takes per reply, and how many requests it has had at once (now, most).
SLOW = {"seconds": 0.0}
IN_FLIGHT = {"now": 0, "most": 0}


def _keyed_server() -> contextlib.AbstractContextManager[tuple[str, list[str]]]:
    """The chat server answering by item text, with this file's failing and slow replies."""
    return serve_keyed(REPLIES, failing=FAILING, slow=SLOW, in_flight=IN_FLIGHT)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    clean_llm_env(monkeypatch, tmp_path / "visprog-cache")
    fakes.reset()
    FAILING.clear()
    yield
    fakes.reset()
    FAILING.clear()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    root = str(Path(__file__).resolve().parents[3])  # the actors import tests.visprog.evaluation.test_engines
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        ignore_reinit_error=True,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": root, "NO_PROXY": "127.0.0.1,localhost"}},
    )
    yield ray
    ray.shutdown()


def _data(tmp_path: Path) -> tuple[Path, Path, Path]:
    from skimage import data

    images = tmp_path / "images"
    images.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        PILImage.fromarray(getattr(data, name)()).resize((64, 48)).save(images / f"{name}.png")
    names = ["astronaut.png", "coffee.png", "chelsea.png"]
    gqa = tmp_path / "gqa.jsonl"
    gqa.write_text(
        "".join(
            json.dumps({"id": f"g{i}", "image": names[i % 3], "question": text, "answer": answer}) + "\n"
            for i, (text, _, answer) in enumerate(_GQA)
        )
    )
    nlvr = tmp_path / "nlvr.jsonl"
    nlvr.write_text(
        "".join(
            json.dumps({"id": f"n{i}", "left": "astronaut.png", "right": right, "statement": text, "answer": label})
            + "\n"
            for i, (text, _, label, right) in enumerate(_NLVR)
        )
    )
    return images, gqa, nlvr


def _settings(url: str) -> WorkerSettings:
    planner = {"base_url": url, "model": "tiny", "max_retries": 0, "timeout": 5, "repair_rounds": 0, "cache": False}
    return WorkerSettings(
        planner=planner, device="cpu", registry="tests.visprog.evaluation.test_engines:registry", max_batch=4
    )


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


def _both_engines(tmp_path: Path, task: str, data: Path, images: Path, url: str) -> tuple[Summary, Summary]:
    settings = _settings(url)
    items = load_items(data, task, images=images)
    planner, interpreter = settings.build()
    common: dict[str, Any] = {"batch_size": 3, "progress": False}
    local = evaluate(items, planner, interpreter, out_path=tmp_path / f"{task}_local.jsonl", **common)
    remote = evaluate(
        items,
        planner,
        interpreter,
        out_path=tmp_path / f"{task}_ray.jsonl",
        engine="ray",
        workers=2,
        settings=settings,
        **common,
    )
    assert _comparable(tmp_path / f"{task}_ray.jsonl") == _comparable(tmp_path / f"{task}_local.jsonl")
    assert _counts(remote) == _counts(local)
    return local, remote


def test_ray_engine_matches_local(tmp_path: Path, local_ray: Any) -> None:
    images, gqa, nlvr = _data(tmp_path)
    with _keyed_server() as (url, asked):
        _, remote = _both_engines(tmp_path, "gqa", gqa, images, url)
        assert (remote.n, remote.correct) == (8, 4)
        assert remote.failures == {"plan_parse": 1, "plan_check": 1, "execution": 0, "wrong_answer": 2}
        assert sorted(asked) == sorted(2 * [text for text, *_ in _GQA])  # every item planned once per engine

        _, remote = _both_engines(tmp_path, "nlvr", nlvr, images, url)
        assert (remote.n, remote.correct) == (4, 2)
        assert remote.failures == {"plan_parse": 0, "plan_check": 0, "execution": 1, "wrong_answer": 1}

    records = {r["id"]: r for r in _comparable(tmp_path / "gqa_ray.jsonl")}
    assert list(records) == [f"g{i}" for i in range(8)]  # item order
    assert records["g3"]["answer"] == "2" and records["g3"]["correct"] is True
    assert records["g4"]["answer"] == "The Blue." and records["g4"]["correct"] is True
    assert records["g6"]["failure"] == "plan_check" and "Teleport" in records["g6"]["error"]
    nlvr_records = {r["id"]: r for r in _comparable(tmp_path / "nlvr_ray.jsonl")}
    assert nlvr_records["n0"]["answer"] is True and nlvr_records["n1"]["answer"] is False
    assert nlvr_records["n3"]["failure"] == "execution" and "missing.png" in nlvr_records["n3"]["error"]


def test_ray_engine_resumes(tmp_path: Path, local_ray: Any) -> None:
    images, gqa, _ = _data(tmp_path)
    items = load_items(gqa, "gqa", images=images)
    out = tmp_path / "resume.jsonl"
    with _keyed_server() as (url, asked):
        settings = _settings(url)
        planner, interpreter = settings.build()
        evaluate(items[:3], planner, interpreter, out_path=out, progress=False)
        summary = evaluate(
            items, planner, interpreter, out_path=out, progress=False, engine="ray", workers=2, settings=settings
        )
    assert (summary.n, summary.skipped, summary.correct) == (8, 3, 4)
    assert len(asked) == 8  # the 3 finished items were not planned again
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [f"g{i}" for i in range(8)]


def test_ray_engine_llm_outage_and_refused_requests(tmp_path: Path, local_ray: Any) -> None:
    """A refused request (HTTP 400) is the item's plan_parse record; an outage (HTTP 503) on an actor
    stops the run after writing what its chunk planned before it; the same call resumes."""
    images, gqa, _ = _data(tmp_path)
    items = load_items(gqa, "gqa", images=images)
    out = tmp_path / "outage.jsonl"
    FAILING.update({"Q01 what?": 400, "Q04 color?": 503})
    with _keyed_server() as (url, asked):
        settings = _settings(url)
        with pytest.raises(ServiceError) as info:
            evaluate(
                items,
                None,  # type: ignore[arg-type]  # the actors build their own
                None,
                out_path=out,
                progress=False,
                engine="ray",
                workers=2,
                batch_size=3,
                settings=settings,
            )
        message = str(info.value)
        assert "the LLM stopped answering at item 'g4'" in message and "HTTP 503" in message
        assert "run the same command again to resume" in message
        records = [json.loads(line) for line in out.read_text().splitlines()]
        # g3 was planned before g4 in the same chunk: it ran and has its record; g4 and later have none
        assert [r["id"] for r in records] == ["g0", "g1", "g2", "g3"]
        assert records[1]["failure"] == "plan_parse" and "HTTP 400" in records[1]["error"]
        assert records[3]["correct"] is True and all("_aborted" not in r for r in records)
        FAILING.pop("Q04 color?")
        asked.clear()
        summary = evaluate(
            items,
            None,  # type: ignore[arg-type]
            None,
            out_path=out,
            progress=False,
            engine="ray",
            workers=2,
            batch_size=3,
            settings=settings,
        )
    assert (summary.n, summary.skipped, summary.evaluated) == (8, 4, 4)
    # only the items without a record (as a set: an actor of the first run, killed while its request
    # was on the way, may still reach the server after the clear)
    assert set(asked) == {text for text, *_ in _GQA[4:]}
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [f"g{i}" for i in range(8)]
    assert summary.failures == {"plan_parse": 2, "plan_check": 1, "execution": 0, "wrong_answer": 2}


def test_planning_several_items_at_once_gives_the_same_records(tmp_path: Path) -> None:
    images, gqa, _ = _data(tmp_path)
    items = load_items(gqa, "gqa", images=images)
    SLOW["seconds"] = 0.15
    IN_FLIGHT.update(now=0, most=0)
    try:
        with _keyed_server() as (url, asked):
            planner, interpreter = _settings(url).build()
            one = evaluate(items, planner, interpreter, out_path=tmp_path / "one.jsonl", progress=False, batch_size=8)
            assert IN_FLIGHT["most"] == 1
            four = evaluate(
                items,
                planner,
                interpreter,
                out_path=tmp_path / "four.jsonl",
                progress=False,
                batch_size=8,
                plan_workers=4,
            )
    finally:
        SLOW["seconds"] = 0.0
    assert IN_FLIGHT["most"] > 1  # requests really were side by side
    assert sorted(asked) == sorted([text for text, *_ in _GQA] * 2)  # each item planned once per run
    assert _comparable(tmp_path / "four.jsonl") == _comparable(tmp_path / "one.jsonl")
    assert _counts(four) == _counts(one)
    assert four.wall_seconds < one.wall_seconds
    with pytest.raises(ConfigError, match="plan_workers must be at least 1"):
        evaluate(items, planner, interpreter, out_path=tmp_path / "x.jsonl", progress=False, plan_workers=0)


def test_service_errors_keep_per_request_through_pickling() -> None:
    import pickle

    for flag in (True, False):
        error = pickle.loads(pickle.dumps(ServiceError("the server refused", per_request=flag)))
        assert isinstance(error, ServiceError) and error.per_request is flag and str(error) == "the server refused"


def test_actors_per_gpu_unless_the_device_is_cpu() -> None:
    from visprog.evaluation.engines import _actors

    gpus = {"GPU": 4.0, "CPU": 16.0}
    assert _actors(gpus, None, None) == (4, {"num_gpus": 1, "num_cpus": 1.0}, "cuda")
    assert _actors(gpus, "cuda:1", 2) == (2, {"num_gpus": 1, "num_cpus": 1.0}, "cuda")  # --workers caps GPU actors
    assert _actors(gpus, "auto", None)[1]["num_gpus"] == 1
    assert _actors(gpus, "cpu", None) == (2, {"num_cpus": 1.0}, "cpu")  # no GPU reserved
    assert _actors(gpus, "cpu", 8) == (8, {"num_cpus": 1.0}, "cpu")
    assert _actors({"CPU": 2.0}, None, 4) == (4, {"num_cpus": 0.5}, None)
    with pytest.raises(ConfigError, match="5 workers asked for, but the Ray cluster has 4 GPU"):
        _actors(gpus, None, 5)


def test_cpu_device_on_a_gpu_cluster_starts_cpu_actors() -> None:
    """The actors' options come from the settings' device (a stand-in for ray records them)."""
    from visprog.evaluation.engines import _run_on_actors

    seen: list[dict[str, Any]] = []

    class _Stop(Exception):
        pass

    class FakeRay:
        def cluster_resources(self) -> dict[str, float]:
            return {"GPU": 2.0, "CPU": 8.0}

        def remote(self, cls: Any) -> Any:
            return self

        def options(self, **kwargs: Any) -> Any:
            seen.append(kwargs)
            raise _Stop

    chunks = [[Item("a", "gqa", "Q?", {"IMAGE": "a.png"})]] * 4
    for device, expected in (("cpu", {"num_cpus": 1.0}), (None, {"num_gpus": 1, "num_cpus": 1.0})):
        with pytest.raises(_Stop):
            next(_run_on_actors(FakeRay(), chunks, process_chunk, WorkerSettings(device=device), None, {}))
        assert seen.pop() == expected


@module
def Crash(image: Image) -> str:
    """End the worker's process at once (a worker that dies, as on running out of memory).

    Args:
        image: an image.
    """
    os._exit(3)


def crashing_registry() -> Any:
    """:func:`registry` plus :func:`Crash` (called in the actors)."""
    r = registry()
    r.register(Crash)
    return r


REPLIES["C0 crash?"] = "ANSWER0=Crash(image=IMAGE)\nFINAL_RESULT=Result(var=ANSWER0)"


def test_a_dying_worker_is_a_clear_error_and_the_records_so_far_are_kept(tmp_path: Path, local_ray: Any) -> None:
    images, gqa, _ = _data(tmp_path)
    items = load_items(gqa, "gqa", images=images)
    crash = Item("c0", "gqa", "C0 crash?", {"IMAGE": str(images / "coffee.png")}, "x")
    out = tmp_path / "crash.jsonl"
    with _keyed_server() as (url, _):
        settings = dataclasses.replace(
            _settings(url), registry="tests.visprog.evaluation.test_engines:crashing_registry"
        )
        with pytest.raises(ServiceError, match="a Ray worker failed while running items") as info:
            evaluate(
                [items[0], crash, items[1]],
                None,  # type: ignore[arg-type]  # the actors build their own
                None,
                out_path=out,
                progress=False,
                engine="ray",
                workers=1,
                batch_size=1,
                settings=settings,
            )
    assert "run the same command again to resume" in str(info.value)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["g0"]


def raising_work(chunk: Sequence[Item], planner: Any, interpreter: Any, **options: Any) -> list[dict[str, Any]]:
    """A unit of work that raises for the chunks of item ``boom`` (after the other chunks are done) and ``config``."""
    ids = [it.id for it in chunk]
    if "boom" in ids:
        time.sleep(1.0)  # the chunk after it finishes first, on the other actor
        raise KeyError("boom")
    if "config" in ids:
        raise ConfigError("a module option the worker found wrong")
    return [{"id": i} for i in ids]


def test_work_that_raises_under_ray_is_no_outage_and_the_chunks_that_finished_keep_their_records(
    local_ray: Any,
) -> None:
    from visprog.evaluation.engines import ray_chunks

    settings = _settings("http://127.0.0.1:9/v1")  # the work never plans
    chunks = [[Item("boom", "gqa", "Q?", {"IMAGE": "a.png"})], [Item("fine", "gqa", "Q?", {"IMAGE": "a.png"})]]
    given: list[str] = []
    with pytest.raises(VisprogError) as info:
        for records in ray_chunks(chunks, raising_work, settings, workers=2):
            given.extend(r["id"] for r in records)
    assert given == ["fine"]  # finished after the failing chunk started, and written all the same
    assert not isinstance(info.value, ServiceError)
    assert str(info.value) == (
        "a Ray worker raised an unexpected error while running items (KeyError: 'boom'); the records written so "
        "far are kept, but running again would stop at the same place: run the remaining items with the local "
        "engine (--traceback shows where the error is)"
    )
    with pytest.raises(ConfigError) as raised:  # as the local engine would raise it
        list(ray_chunks([[Item("config", "gqa", "Q?", {"IMAGE": "a.png"})]], raising_work, settings, workers=1))
    assert str(raised.value) == "a module option the worker found wrong"


def test_ray_engine_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs worker settings"):
        evaluate([], None, None, out_path=tmp_path / "x.jsonl", engine="ray", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown engine 'spark'"):
        evaluate([], None, None, out_path=tmp_path / "x.jsonl", engine="spark", progress=False)  # type: ignore[arg-type]
    from visprog.evaluation.engines import load_factory, ray_chunks

    with pytest.raises(ConfigError, match="no function nope"):
        load_factory("tests.fakes:nope")
    with pytest.raises(ConfigError, match="expected 'module:function'"):
        next(ray_chunks([[]], process_chunk, WorkerSettings(registry="tests.fakes")))
    with pytest.raises(ConfigError, match=r"cannot connect to the Ray cluster at 127\.0\.0\.1:1"):
        next(ray_chunks([[]], process_chunk, WorkerSettings(), address="127.0.0.1:1"))


# Items answered by a tiny random BLIP: the expected answers are what the model itself answers when
# each program runs alone, so the evaluation's accuracy is known (3 right, 1 deliberately wrong).
_TINY = [
    ("T0 what is it?", _vqa("what is this")),
    ("T1 colour?", _vqa("what color is it")),
    ("T2 where?", _vqa("where is the cat")),
    ("T3 count?", _vqa("how many dogs")),
]
REPLIES.update(dict(_TINY))


def test_ray_engine_matches_local_with_a_tiny_model(tmp_path: Path, local_ray: Any) -> None:
    from tests.modules.test_vqa import build_blip
    from visprog.running.interpreter import Interpreter
    from visprog.running.plugins import default_registry
    from visprog.running.runtime import Runtime

    blip = tmp_path / "tiny-blip"
    build_blip(blip)
    images, _, _ = _data(tmp_path)
    names = ["astronaut.png", "coffee.png", "chelsea.png", "astronaut.png"]
    reference = Interpreter(default_registry(), Runtime(device_request="cpu", modules={"Vqa": {"model": str(blip)}}))
    expected = [
        str(reference.run(reply, {"IMAGE": PILImage.open(images / name).convert("RGB")}).result)
        for (_, reply), name in zip(_TINY, names, strict=True)
    ]
    expected[3] = "certainly not " + expected[3]  # one wrong answer
    data = tmp_path / "tiny.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"t{i}", "image": name, "question": text, "answer": answer}) + "\n"
            for i, ((text, _), name, answer) in enumerate(zip(_TINY, names, expected, strict=True))
        )
    )
    with _keyed_server() as (url, _asked):
        planner_options = {
            "base_url": url, "model": "tiny", "max_retries": 0, "timeout": 5, "repair_rounds": 0, "cache": False
        }  # fmt: skip
        settings = WorkerSettings(
            planner=planner_options,
            device="cpu",
            modules={"Vqa": {"model": str(blip)}},
            registry="visprog.running.plugins:default_registry",
            max_batch=4,
        )
        items = load_items(data, "gqa", images=images)
        planner, interpreter = settings.build()
        local = evaluate(items, planner, interpreter, out_path=tmp_path / "local.jsonl", progress=False)
        remote = evaluate(
            items,
            planner,
            interpreter,
            out_path=tmp_path / "ray.jsonl",
            progress=False,
            engine="ray",
            workers=2,
            settings=settings,
            batch_size=2,
        )
    assert _comparable(tmp_path / "ray.jsonl") == _comparable(tmp_path / "local.jsonl")
    assert (local.n, local.correct, local.failures.get("wrong_answer")) == (4, 3, 1)
    assert _counts(remote) == _counts(local)
