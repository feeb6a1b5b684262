"""Hostile inputs to ``visprog eval``: each is one item's failure or one clear error, never a lost run.

An item whose question is not Unicode, whose answer cannot be scored, or whose planning raises gets
a record saying so and the evaluation goes on; a data file or a results file that is not UTF-8, and
``-o`` naming a folder, are one :class:`~visprog.errors.VisprogError` naming the file, with nothing in
the file changed. The modules are ``tests/fakes.py`` stand-ins; the LLM is a loopback server answering
by question.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from tests import fakes
from tests.servers import clean_llm_env, serve_keyed
from visprog.errors import ConfigError
from visprog.evaluation.datasets import load_items
from visprog.evaluation.results import ResultsError
from visprog.evaluation.runner import evaluate
from visprog.evaluation.summary import summarize
from visprog.language.signatures import Registry, module
from visprog.language.values import Image
from visprog.llm import client_from_options
from visprog.planner.core import Planner
from visprog.running.interpreter import Interpreter


@module
def Huge(image: Image) -> int:
    """A number too long for Python to write out (more than 4300 digits).

    Args:
        image: an image.
    """
    return 10**5000


def _registry() -> Registry:
    registry = fakes.registry()
    registry.register(Huge)
    return registry


def _vqa(question: str) -> str:
    return f"ANSWER0=Vqa(image=IMAGE, question='{question}')\nFINAL_RESULT=Result(var=ANSWER0)"


REPLIES = {f"Plain {i}?": _vqa(f"Plain {i}?") for i in range(3)}
REPLIES["How big?"] = "N=Huge(image=IMAGE)\nFINAL_RESULT=Result(var=N)"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    clean_llm_env(monkeypatch, tmp_path / "visprog-cache")
    fakes.reset()
    fakes.VQA_ANSWERS.update({f"Plain {i}?": "cat" for i in range(3)})
    yield
    fakes.reset()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    PILImage.new("RGB", (32, 24), "gray").save(tmp_path / "cat.png")
    return tmp_path


def _rows(folder: Path, rows: list[dict[str, Any]]) -> Path:
    path = folder / "items.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _run(folder: Path, rows: list[dict[str, Any]], **options: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Evaluate ``rows`` (gqa items with the image cat.png); their records in file order, and the questions asked."""
    items = load_items(_rows(folder, rows), "gqa")
    out = folder / "results.jsonl"
    with serve_keyed(REPLIES) as (url, asked):
        backend = client_from_options(base_url=url, model="tiny", max_retries=0, timeout=5)
        planner = Planner(backend, registry=_registry(), cache=False, repair_rounds=0)
        evaluate(items, planner, Interpreter(_registry()), out_path=out, progress=False, **options)
    return [json.loads(line) for line in out.read_text().splitlines()], asked


def _plain(i: int) -> dict[str, Any]:
    return {"id": f"p{i}", "image": "cat.png", "question": f"Plain {i}?", "answer": "cat"}


def test_a_question_with_an_unpaired_surrogate_is_its_items_failure_and_is_never_sent(folder: Path) -> None:
    # "\ud800" in the JSON file: a lone surrogate, which no UTF-8 request can carry
    bad = json.loads('{"id": "s\\ud800", "image": "cat.png", "question": "Plain 1? \\ud800", "answer": "cat"}')
    assert bad["question"] == "Plain 1? \ud800"
    rows = [_plain(0), bad, _plain(2)]
    records, asked = _run(folder, rows, traces=folder / "pages", all_traces=True)
    assert [r["id"] for r in records] == ["p0", "s\ud800", "p2"]
    assert records[1]["failure"] == "plan_parse" and records[1]["correct"] is False
    assert "unpaired surrogate (U+D800) at character 10" in records[1]["error"]
    assert sorted(asked) == ["Plain 0?", "Plain 2?"]  # the run went on; the bad question was never sent
    assert [r["correct"] for r in (records[0], records[2])] == [True, True]


def test_an_id_with_an_unpaired_surrogate_still_gets_its_record_and_trace_page(folder: Path) -> None:
    row = json.loads('{"id": "i\\udc80", "image": "cat.png", "question": "Plain 0?", "answer": "cat"}')
    records, _ = _run(folder, [row, _plain(1)], traces=folder / "pages", all_traces=True)
    assert [r["id"] for r in records] == ["i\udc80", "p1"] and records[0]["correct"] is True
    assert records[0]["trace_file"] is None and "the trace page could not be saved" in records[0]["error"]
    assert Path(records[1]["trace_file"]).is_file()


def test_an_answer_too_long_to_normalise_is_a_wrong_answer_and_the_run_goes_on(folder: Path) -> None:
    rows = [_plain(0), {"id": "big", "image": "cat.png", "question": "How big?", "answer": "7"}, _plain(2)]
    records, _ = _run(folder, rows)
    assert [r["id"] for r in records] == ["p0", "big", "p2"]
    big = records[1]
    assert big["failure"] == "wrong_answer" and big["correct"] is False
    assert big["answer"] == "<an integer of 16,610 bits>"
    assert big["error"].startswith("the answer could not be compared with the expected one: ValueError: ")
    assert [r["correct"] for r in (records[0], records[2])] == [True, True]


def test_an_expected_answer_nested_too_deeply_to_score_is_a_wrong_answer(folder: Path) -> None:
    deep: Any = "cat"
    for _ in range(900):  # JSON reads it; scoring's alternatives (a list of lists ...) recurse past the limit
        deep = [deep]
    rows = [{**_plain(0), "answer": deep}, _plain(1)]
    records, _ = _run(folder, rows)
    assert [r["id"] for r in records] == ["p0", "p1"]
    assert records[0]["failure"] == "wrong_answer" and "RecursionError" in records[0]["error"]
    assert "nested more than 64 deep" in json.dumps(records[0]["expected"])
    assert records[1]["correct"] is True


def test_a_reply_nested_five_hundred_deep_is_its_items_failure(folder: Path) -> None:
    expr = "1"
    for _ in range(500):
        expr = f"1 if True else {expr}"
    REPLIES["Deep?"] = f"ANSWER0=Eval(expr='{expr}')\nFINAL_RESULT=Result(var=ANSWER0)"
    try:
        records, _ = _run(folder, [_plain(0), {"id": "d", "image": "cat.png", "question": "Deep?"}, _plain(2)])
    finally:
        del REPLIES["Deep?"]
    assert [r["id"] for r in records] == ["p0", "d", "p2"]
    assert records[1]["failure"] in ("plan_check", "plan_parse") and records[1]["program"] is None
    assert [r["correct"] for r in (records[0], records[2])] == [True, True]


def test_a_latin_1_data_file_is_one_error_naming_the_line_and_column(tmp_path: Path) -> None:
    data = tmp_path / "latin.jsonl"
    rows = [_plain(0), {"id": "q1", "image": "cat.png", "question": "Où est le café?"}]
    data.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_items(data, "gqa")
    expected = f"{data}:2:48: not UTF-8 text (byte 0xF9): save the data file as UTF-8 (JSON files are UTF-8)"
    assert str(info.value) == expected
    # a byte order mark (as some editors write) is no error
    data.write_bytes(b"\xef\xbb\xbf" + json.dumps(_plain(0)).encode() + b"\n")
    assert [it.id for it in load_items(data, "gqa")] == ["p0"]


def test_a_results_file_that_is_not_utf_8_is_one_error_and_is_left_as_it_was(folder: Path) -> None:
    out = folder / "results.jsonl"
    before = json.dumps({"id": "p0", "task": "gqa", "correct": True}).encode() + b"\n\xff\xfe binary\n"
    out.write_bytes(before)
    with pytest.raises(ResultsError) as info:
        _run(folder, [_plain(0), _plain(1)])
    assert str(info.value).startswith(f"{out}:2:1: not UTF-8 text (byte 0xFF), so not the records of an evaluation")
    assert "another file (-o)" in str(info.value)
    assert out.read_bytes() == before


def test_output_naming_a_folder_is_one_error_before_anything_is_planned(folder: Path) -> None:
    items = load_items(_rows(folder, [_plain(0)]), "gqa")
    with serve_keyed(REPLIES) as (url, asked):
        planner = Planner(client_from_options(base_url=url, model="tiny"), registry=_registry(), cache=False)
        with pytest.raises(ResultsError) as info:
            evaluate(items, planner, Interpreter(_registry()), out_path=folder, progress=False)
    assert str(info.value) == (
        f"{folder} is a folder: the records of an evaluation go to a file, e.g. {folder / 'results.jsonl'}"
    )
    assert asked == [] and not (folder.parent / f"{folder.name}.summary.json").exists()


def test_the_summary_of_records_edited_by_hand_counts_what_it_can() -> None:
    records = [
        {"id": "a", "correct": True, "expected": "x", "seconds": "soon", "timings": ["Vqa"]},
        {"id": "b", "correct": False, "expected": "y", "failure": "wrong_answer", "seconds": 2.0},
        {"id": "c", "seconds": float("nan"), "timings": {"Vqa": None}},
    ]
    summary = summarize(records)
    assert (summary.n, summary.correct, summary.scored, summary.failures["wrong_answer"]) == (3, 1, 2, 1)
    assert summary.latency["p99"] == pytest.approx(1.96) and summary.module_seconds == {"Vqa": 0.0}
