"""Dataset evaluation end to end: scripted planner (loopback OpenAI-compatible server) and fake modules.

The modules are ``tests/fakes.py`` stand-ins with scripted answers (not tiny
models), so accuracies and failure counts are known exactly.
``tests/visprog/evaluation/test_evaluate_models.py`` does the same on the real modules with tiny random models.
"""

from __future__ import annotations

import ast
import graphlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from tests import fakes
from tests.llm_server import Reply, ScriptedServer, serve_scripted
from tests.servers import clean_llm_env, closed_port
from tests.visprog.evaluation.test_datasets import compare_task
from visprog.errors import ConfigError, ServiceError
from visprog.evaluation import runner
from visprog.evaluation.datasets import Item, load_items
from visprog.evaluation.engines import local_chunks
from visprog.evaluation.runner import evaluate
from visprog.evaluation.summary import Summary, summarize
from visprog.llm import client_from_options
from visprog.planner.core import Planner
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import RunCache
from visprog.running.tracing import Trace

DATA = Path(__file__).resolve().parents[2] / "data" / "eval"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    clean_llm_env(monkeypatch, tmp_path / "visprog-cache")
    fakes.reset()
    yield
    fakes.reset()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with serve_scripted() as s:
        yield s


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    from skimage import data

    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        PILImage.fromarray(getattr(data, name)()).resize((64, 48)).save(folder / f"{name}.png")
    return folder


def _planner(server: ScriptedServer) -> Planner:
    backend = client_from_options(base_url=server.url, model="tiny", max_retries=0, timeout=5)
    return Planner(backend, registry=fakes.registry(), cache=False, repair_rounds=0)


class _OneByOne:
    """An interpreter without ``run_many``: evaluate falls back to ``run``."""

    def __init__(self, inner: Interpreter) -> None:
        self.inner = inner

    def run(self, program: Any, inputs: Mapping[str, Any], *, cache: RunCache | None = None) -> Trace:
        return self.inner.run(program, inputs, cache=cache)


def _interpreter(kind: str) -> Any:
    interpreter = Interpreter(fakes.registry(), max_batch=4)
    return interpreter if kind == "native" else _OneByOne(interpreter)


def _vqa_program(question: str, image: str = "IMAGE") -> str:
    return f"ANSWER0=Vqa(image={image}, question='{question}')\nFINAL_RESULT=Result(var=ANSWER0)"


# 14 correct (some only after normalisation), 3 wrong, 2 unknown modules (plan_check), 1 garbage (plan_parse)
_GQA: list[tuple[str | None, str, str]] = [
    # (scripted fake answer or None for a planning failure, reply kind, expected answer)
    *[(f"answer {i}", "ok", f"answer {i}") for i in range(10)],
    ("2", "ok", "two"),
    ("The red car.", "ok", "red car"),
    ("yes", "ok", "Yes"),
    ("three", "ok", "3"),
    ("blue", "ok", "green"),
    ("left", "ok", "right"),
    ("4", "ok", "five"),
    (None, "unknown", "x"),
    (None, "unknown", "y"),
    (None, "garbage", "z"),
]


def _gqa_file(tmp_path: Path, photos: Path) -> tuple[Path, list[str]]:
    lines, replies = [], []
    names = ["astronaut.png", "coffee.png", "chelsea.png"]
    for i, (answer, kind, expected) in enumerate(_GQA):
        question = f"What is in region {i}?"
        lines.append(json.dumps({"id": f"q{i:02d}", "image": names[i % 3], "question": question, "answer": expected}))
        if kind == "ok":
            assert answer is not None
            fakes.VQA_ANSWERS[question] = answer
            replies.append(_vqa_program(question))
        elif kind == "unknown":
            replies.append("ANSWER0=Teleport(image=IMAGE, where='moon')\nFINAL_RESULT=Result(var=ANSWER0)")
        else:
            replies.append("I am sorry ((( => not @@ a program")
    path = tmp_path / "gqa.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, replies


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("kind", ["native", "one_by_one"])
def test_gqa_style_accuracy_and_failures(
    kind: str, server: ScriptedServer, tmp_path: Path, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, replies = _gqa_file(tmp_path, photos)
    server.script(replies)
    items = load_items(data, "gqa", images=photos)
    out = tmp_path / "results.jsonl"
    summary = evaluate(items, _planner(server), _interpreter(kind), out_path=out, batch_size=8, progress=True)

    assert summary.n == 20
    assert summary.correct == 14
    assert summary.accuracy == pytest.approx(0.7)
    assert summary.failures == {"plan_parse": 1, "plan_check": 2, "execution": 0, "wrong_answer": 3}
    assert summary.failure_rates["wrong_answer"] == pytest.approx(0.15)
    assert len(server.requests) == 20 and server.pending == 0
    assert set(summary.module_seconds) >= {"Vqa", "Result"}
    assert summary.latency["p50"] <= summary.latency["p90"] <= summary.latency["p99"]

    records = _records(out)
    assert [r["id"] for r in records] == [f"q{i:02d}" for i in range(20)]
    by_id = {r["id"]: r for r in records}
    assert by_id["q10"]["answer"] == "2" and by_id["q10"]["correct"] is True
    assert by_id["q14"]["failure"] == "wrong_answer" and by_id["q14"]["expected"] == "green"
    assert by_id["q17"]["failure"] == "plan_check" and "Teleport" in by_id["q17"]["error"]
    assert by_id["q19"]["failure"] == "plan_parse" and by_id["q19"]["program"] is None
    assert by_id["q00"]["program"].startswith("ANSWER0=Vqa(") and "Vqa" in by_id["q00"]["timings"]

    saved = json.loads((tmp_path / "results.summary.json").read_text())
    assert saved["n"] == 20 and saved["accuracy"] == pytest.approx(0.7) and saved["failures"]["plan_check"] == 2
    captured = capsys.readouterr()
    assert "20/20" in captured.err and "accuracy 70.0%" in captured.err  # progress bar
    assert "accuracy" in captured.out and "plan_parse" in captured.out  # the table
    if kind == "native" and hasattr(Interpreter, "run_many"):
        # Vqa steps of one chunk are batched across programs (at most max_batch=4 each)
        assert max(n for name, n in fakes.CALLS if name == "Vqa") > 1


def test_nlvr_style_with_bool_and_string_labels(server: ScriptedServer, tmp_path: Path, photos: Path) -> None:
    # 10 statements: 7 correct, 2 wrong, 1 whose right image is missing (execution)
    cases: list[tuple[str, str, str, Any]] = [
        # (left answer, right answer, operator, label)
        ("yes", "no", "xor", True),
        ("yes", "yes", "xor", "False"),
        ("no", "no", "xor", False),
        ("yes", "yes", "and", "True"),
        ("yes", "no", "and", "False"),
        ("no", "yes", "xor", "true"),
        ("no", "no", "and", False),
        ("yes", "no", "and", True),  # wrong: the program says False
        ("no", "no", "xor", "True"),  # wrong
        ("yes", "yes", "and", True),  # right image missing
    ]
    lines, replies = [], []
    for i, (left, right, op, label) in enumerate(cases):
        ql, qr = f"Left question {i}?", f"Right question {i}?"
        fakes.VQA_ANSWERS[ql], fakes.VQA_ANSWERS[qr] = left, right
        right_file = "missing.png" if i == 9 else "coffee.png"
        row = {"id": f"n{i}", "left": "astronaut.png", "right": right_file, "statement": f"s{i}", "answer": label}
        lines.append(json.dumps(row))
        replies.append(
            f"ANSWER0=Vqa(image=LEFT, question='{ql}')\nANSWER1=Vqa(image=RIGHT, question='{qr}')\n"
            f"ANSWER2=Eval(expr='{{ANSWER0}} {op} {{ANSWER1}}')\nFINAL_RESULT=Result(var=ANSWER2)"
        )
    data = tmp_path / "nlvr.jsonl"
    data.write_text("\n".join(lines) + "\n")
    server.script(replies[:9])  # the item whose image fails to load is never planned
    items = load_items(data, "nlvr", images=photos)
    assert set(items[0].images) == {"LEFT", "RIGHT"}
    out = tmp_path / "nlvr_results.jsonl"
    summary = evaluate(items, _planner(server), _interpreter("native"), out_path=out, progress=False)

    assert (summary.n, summary.correct) == (10, 7)
    assert summary.failures == {"plan_parse": 0, "plan_check": 0, "execution": 1, "wrong_answer": 2}
    records = {r["id"]: r for r in _records(out)}
    assert records["n0"]["answer"] is True and records["n0"]["expected"] is True
    assert records["n3"]["answer"] is True and records["n3"]["expected"] == "True" and records["n3"]["correct"]
    assert records["n7"]["failure"] == "wrong_answer"
    assert records["n9"]["failure"] == "execution" and "missing.png" in records["n9"]["error"]
    assert len(server.requests) == 9


def test_resume_plans_only_the_remaining_items(server: ScriptedServer, tmp_path: Path, photos: Path) -> None:
    data, replies = _gqa_file(tmp_path, photos)
    items = load_items(data, "gqa", images=photos)
    out = tmp_path / "resume.jsonl"
    server.script(replies[:10])
    first = evaluate(items[:10], _planner(server), _interpreter("native"), out_path=out, progress=False)
    assert (first.n, first.correct, len(server.requests)) == (10, 10, 10)

    server.script(replies[10:])
    full = evaluate(items, _planner(server), _interpreter("native"), out_path=out, progress=False, batch_size=3)
    assert len(server.requests) == 20  # only the 10 new items were planned
    assert full.skipped == 10
    assert (full.n, full.correct) == (20, 14)
    assert full.failures == {"plan_parse": 1, "plan_check": 2, "execution": 0, "wrong_answer": 3}
    assert sorted(r["id"] for r in _records(out)) == [f"q{i:02d}" for i in range(20)]
    # a third run does nothing and asks nothing
    again = evaluate(items, _planner(server), _interpreter("native"), out_path=out, progress=False)
    assert (again.n, again.skipped, len(server.requests)) == (20, 20, 20)


def test_resuming_into_a_file_of_another_task_is_refused(server: ScriptedServer, tmp_path: Path, photos: Path) -> None:
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"id": "x1", "image": "chelsea.png", "question": "What?", "answer": "cat"}) + "\n")
    out = tmp_path / "shared.jsonl"
    out.write_text(json.dumps({"id": "x1", "task": "edit", "correct": None}) + "\n")
    items = load_items(data, "gqa", images=photos)
    with pytest.raises(ConfigError, match="already has a record for 'x1' from task edit, not gqa"):
        evaluate(items, _planner(server), _interpreter("native"), out_path=out, progress=False)
    assert server.requests == []


def test_resume_ignores_a_line_cut_short(server: ScriptedServer, tmp_path: Path, photos: Path) -> None:
    data, replies = _gqa_file(tmp_path, photos)
    items = load_items(data, "gqa", images=photos)[:2]
    out = tmp_path / "cut.jsonl"
    out.write_text('{"id": "q00", "correct": tr')  # a crash mid-write
    server.script(replies[:2])
    summary = evaluate(items, _planner(server), _interpreter("native"), out_path=out, progress=False)
    assert (summary.n, summary.correct, summary.skipped) == (2, 2, 0)
    lines = out.read_text().splitlines()
    assert lines[0] == '{"id": "q00", "correct": tr' and [json.loads(x)["id"] for x in lines[1:]] == ["q00", "q01"]


def test_samples_vote(server: ScriptedServer, tmp_path: Path, photos: Path) -> None:
    fakes.VQA_ANSWERS.update({"A?": "cat", "B?": "dog"})
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"id": "v", "image": "chelsea.png", "question": "What?", "answer": "dog"}) + "\n")
    server.script([_vqa_program("A?"), _vqa_program("B?"), _vqa_program("B?")])
    out = tmp_path / "vote.jsonl"
    items = load_items(data, "gqa", images=photos)
    summary = evaluate(items, _planner(server), _interpreter("native"), out_path=out, samples=3, progress=False)
    assert summary.correct == 1
    (rec,) = _records(out)
    assert rec["answer"] == "dog" and rec["agreement"] == pytest.approx(2 / 3) and len(rec["programs"]) == 3
    assert all(r.body.get("temperature") == pytest.approx(0.7) for r in server.requests)


def test_answers_are_json_safe(server: ScriptedServer, tmp_path: Path, photos: Path) -> None:
    data = tmp_path / "crop.jsonl"
    data.write_text(json.dumps({"id": "c", "image": "coffee.png", "question": "Crop it"}) + "\n")
    server.script(
        ["BOX0=Loc(image=IMAGE, object='cup')\nIMAGE0=Crop(image=IMAGE, box=BOX0)\nFINAL_RESULT=Result(var=IMAGE0)"]
    )
    out = tmp_path / "crop_results.jsonl"
    summary = evaluate(
        load_items(data, "gqa", images=photos), _planner(server), _interpreter("native"), out_path=out, progress=False
    )
    (rec,) = _records(out)
    assert rec["failure"] is None, rec["error"]
    assert rec["answer"].startswith("<image ") and rec["correct"] is None and summary.n == 1


def test_trace_pages_of_failed_and_wrong_items(server: ScriptedServer, tmp_path: Path, photos: Path) -> None:
    fakes.VQA_ANSWERS.update({"Size?": "3", "Colour?": "red"})
    rows = [
        {"id": "ok", "image": "coffee.png", "question": "Colour?", "answer": "red"},
        {"id": "wrong/1", "image": "coffee.png", "question": "Colour, really?", "answer": "blue"},
        {"id": "fails", "image": "coffee.png", "question": "Size?", "answer": "3"},
        {"id": "unplanned", "image": "coffee.png", "question": "Moon?", "answer": "x"},
    ]
    data = tmp_path / "pages.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dividing = "ANSWER0=Vqa(image=IMAGE, question='Size?')\nANSWER1=Eval(expr='{ANSWER0} / 0')\nRESULT=ANSWER1"
    teleport = "ANSWER0=Teleport(image=IMAGE)\nRESULT=ANSWER0"
    server.script([_vqa_program("Colour?"), _vqa_program("Colour?"), dividing, teleport])
    out = tmp_path / "pages-results.jsonl"
    items = load_items(data, "gqa", images=photos)
    pages = tmp_path / "pages"
    evaluate(items, _planner(server), _interpreter("native"), out_path=out, progress=False, traces=pages)
    records = {r["id"]: r for r in _records(out)}
    assert records["ok"]["trace_file"] is None and records["unplanned"]["trace_file"] is None  # nothing to show
    wrong = Path(records["wrong/1"]["trace_file"])
    assert wrong.parent == pages and wrong.name.startswith("wrong_1-") and wrong.suffix == ".html"
    assert "Colour, really?" in wrong.read_text(encoding="utf-8")
    failed = (pages / "fails.html").read_text(encoding="utf-8")
    assert records["fails"]["trace_file"] == str(pages / "fails.html")
    assert 'data-status="failed"' in failed and "division by zero" in failed and 'data-module="Vqa"' in failed
    assert len(list(pages.iterdir())) == 2


def _rows_file(tmp_path: Path, n: int, name: str = "rows.jsonl", image: str = "coffee.png") -> Path:
    data = tmp_path / name
    data.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "image": image, "question": f"Row {i}?", "answer": f"a{i}"}) + "\n"
            for i in range(n)
        )
    )
    return data


def test_missing_images_stop_before_planning_when_none_is_found(
    server: ScriptedServer, tmp_path: Path, photos: Path
) -> None:
    data = _rows_file(tmp_path, 3)
    items = load_items(data, "gqa")  # the images are in photos/, not next to the data file
    with pytest.raises(ConfigError, match=r"none of the 3 items' images were found, e\.g\. .*coffee\.png") as info:
        evaluate(items, _planner(server), _interpreter("native"), out_path=tmp_path / "none.jsonl", progress=False)
    assert "pass --images DIR, the folder with the images" in str(info.value)
    assert server.requests == [] and not (tmp_path / "none.summary.json").exists()
    # URLs are not checked (they load, or fail, at run time), nor are items already done
    urls = [Item("u", "gqa", "Q?", {"IMAGE": "http://127.0.0.1:1/missing.png"}, "x")]
    server.script(["ANSWER0=Vqa(image=IMAGE, question='Q?')\nFINAL_RESULT=Result(var=ANSWER0)"])
    out = tmp_path / "urls.jsonl"
    assert evaluate(urls, _planner(server), _interpreter("native"), out_path=out, progress=False).n == 1
    with pytest.raises(ConfigError, match=r"^the item's image was not found: .*coffee\.png; pass --images DIR"):
        evaluate(items[:1], _planner(server), _interpreter("native"), out_path=out, progress=False)
    out.write_text(json.dumps({"id": "r0", "correct": True, "failure": None, "expected": "a0"}) + "\n")
    summary = evaluate(items[:1], _planner(server), _interpreter("native"), out_path=out, progress=False)
    assert (summary.n, summary.skipped) == (1, 1)


def test_some_missing_images_are_one_warning_and_execution_failures(
    server: ScriptedServer, tmp_path: Path, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.VQA_ANSWERS.update({f"Row {i}?": f"a{i}" for i in range(4)})
    data = _rows_file(tmp_path, 4)
    lines = data.read_text().splitlines()
    lines[1] = lines[1].replace("coffee.png", "gone.png")
    lines[3] = lines[3].replace("coffee.png", "also-gone.png")
    data.write_text("\n".join(lines) + "\n")
    server.script([_vqa_program("Row 0?"), _vqa_program("Row 2?")])
    out = tmp_path / "some.jsonl"
    items = load_items(data, "gqa", images=photos)
    summary = evaluate(items, _planner(server), _interpreter("native"), out_path=out, progress=False)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1
    assert f"2 of the 4 items to evaluate lack their images (e.g. {photos / 'gone.png'})" in err
    assert (summary.n, summary.correct, summary.failures["execution"]) == (4, 2, 2)
    records = {r["id"]: r for r in _records(out)}
    assert records["r1"]["failure"] == "execution" and "gone.png" in records["r1"]["error"]
    assert len(server.requests) == 2  # the items without their images were never planned


def test_a_request_the_llm_refuses_is_that_items_plan_parse_failure(
    server: ScriptedServer, tmp_path: Path, photos: Path
) -> None:
    fakes.VQA_ANSWERS.update({f"Row {i}?": f"a{i}" for i in range(3)})
    data = _rows_file(tmp_path, 3)
    server.script(
        [
            _vqa_program("Row 0?"),
            Reply.error(400, "This model's maximum context length is 4096 tokens"),
            _vqa_program("Row 2?"),
        ]
    )
    out = tmp_path / "refused.jsonl"
    items = load_items(data, "gqa", images=photos)
    summary = evaluate(items, _planner(server), _interpreter("native"), out_path=out, progress=False, samples=1)
    assert (summary.n, summary.correct, summary.failures["plan_parse"]) == (3, 2, 1)
    refused = _records(out)[1]
    assert refused["id"] == "r1" and refused["failure"] == "plan_parse" and refused["program"] is None
    assert "HTTP 400" in refused["error"] and "maximum context length" in refused["error"]
    assert refused["programs"] == [None] and refused["correct"] is False
    # with samples, a refused request is not sent again for the item's other samples
    server.script([Reply.error(413, "payload too large"), _vqa_program("Row 2?"), _vqa_program("Row 2?")])
    voted = tmp_path / "refused-voted.jsonl"
    summary = evaluate(items[1:], _planner(server), _interpreter("native"), out_path=voted, progress=False, samples=2)
    assert summary.failures["plan_parse"] == 1 and summary.correct == 1 and server.pending == 0
    assert "HTTP 413" in _records(voted)[0]["error"]


def test_every_request_refused_alike_is_a_setup_problem_not_the_items(
    server: ScriptedServer, tmp_path: Path, photos: Path
) -> None:
    """Some servers answer a wrong model name with HTTP 400: a chunk refused identically stops the run."""
    fakes.VQA_ANSWERS.update({f"Row {i}?": f"a{i}" for i in range(3)})
    data = _rows_file(tmp_path, 3)
    items = load_items(data, "gqa", images=photos)
    out = tmp_path / "alike.jsonl"
    server.script([Reply.error(400, "model 'gpt-5-typo' does not exist")] * 3)
    with pytest.raises(ServiceError, match="every request of 3 items was refused the same way") as info:
        evaluate(items, _planner(server), _interpreter("native"), out_path=out, progress=False, batch_size=3)
    assert "model 'gpt-5-typo' does not exist" in str(info.value) and "resume" in str(info.value)
    assert not out.exists() or out.read_text() == ""  # no item keeps the refusal as its record
    saved = json.loads((tmp_path / "alike.summary.json").read_text())
    assert saved["n"] == 0  # the summary so far is saved even when the run stops
    # with the setup fixed, the same call evaluates every item
    server.script([_vqa_program(f"Row {i}?") for i in range(3)])
    summary = evaluate(items, _planner(server), _interpreter("native"), out_path=out, progress=False, batch_size=3)
    assert (summary.n, summary.correct) == (3, 3)


@pytest.mark.parametrize(
    "outage",
    [Reply.server_error(), Reply.error(401, "bad key"), Reply.rate_limited(), Reply.error(404, "no such model")],
    ids=["500", "401", "429", "404"],
)
def test_an_llm_outage_stops_the_run_after_saving_what_was_planned_and_the_same_call_resumes(
    outage: Reply, server: ScriptedServer, tmp_path: Path, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.VQA_ANSWERS.update({f"Row {i}?": f"a{i}" for i in range(7)})
    data = _rows_file(tmp_path, 7)
    items = load_items(data, "gqa", images=photos)
    out = tmp_path / "outage.jsonl"
    # chunks of 3: r0-r2 finish; r3 and r4 are planned, then the LLM fails on r5
    server.script([_vqa_program(f"Row {i}?") for i in range(5)] + [outage])
    with pytest.raises(ServiceError) as info:
        evaluate(items, _planner(server), _interpreter("native"), out_path=out, batch_size=3, progress=True)
    message = str(info.value)
    assert "the LLM stopped answering at item 'r5'" in message and str(server.url) in message
    assert (
        f"the records so far (5, 5 of them written now) are saved in {out}; 2 item(s) have none yet" in message
        and "run the same command again to resume" in message
    )
    assert not info.value.per_request
    records = _records(out)
    assert [r["id"] for r in records] == ["r0", "r1", "r2", "r3", "r4"]  # r3, r4 ran although r5 failed
    assert all(r["correct"] for r in records) and len(server.requests) == 6
    saved = json.loads((tmp_path / "outage.summary.json").read_text())  # the summary so far
    assert (saved["n"], saved["correct"]) == (5, 5)
    assert "eval [" in capsys.readouterr().err
    # the same call again plans the items without a record: r5 and r6
    server.script([_vqa_program("Row 5?"), _vqa_program("Row 6?")])
    summary = evaluate(items, _planner(server), _interpreter("native"), out_path=out, batch_size=3, progress=False)
    assert (summary.n, summary.correct, summary.skipped, summary.evaluated) == (7, 7, 5, 2)
    assert [r["id"] for r in _records(out)] == [f"r{i}" for i in range(7)]
    assert server.pending == 0 and len(server.requests) == 8


def test_an_unreachable_llm_stops_the_run_at_the_first_item(tmp_path: Path, photos: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    backend = client_from_options(base_url=url, model="tiny", max_retries=0, timeout=5)
    planner = Planner(backend, registry=fakes.registry(), cache=False, repair_rounds=0)
    items = load_items(_rows_file(tmp_path, 2), "gqa", images=photos)
    out = tmp_path / "down.jsonl"
    with pytest.raises(ServiceError, match=r"stopped answering at item 'r0'.*could not be reached") as info:
        evaluate(items, planner, _interpreter("native"), out_path=out, progress=False)
    assert "the records so far (0, 0 of them written now)" in str(info.value)
    assert out.read_text() == ""


class _Slow(_OneByOne):
    """Every program takes at least 0.05 s more."""

    def run(self, program: Any, inputs: Mapping[str, Any], *, cache: RunCache | None = None) -> Trace:
        import time

        time.sleep(0.05)
        return super().run(program, inputs, cache=cache)


@pytest.mark.parametrize("kind", ["native", "slow"])
def test_latency_is_load_plus_plan_plus_run_and_the_summary_has_wall_time_and_throughput(
    kind: str, server: ScriptedServer, tmp_path: Path, photos: Path
) -> None:
    fakes.VQA_ANSWERS.update({f"Row {i}?": f"a{i}" for i in range(4)})
    items = load_items(_rows_file(tmp_path, 4), "gqa", images=photos)
    server.script([_vqa_program(f"Row {i}?") for i in range(4)])
    interpreter = _Slow(Interpreter(fakes.registry())) if kind == "slow" else _interpreter("native")
    out = tmp_path / "latency.jsonl"
    summary = evaluate(items, _planner(server), interpreter, out_path=out, batch_size=4, progress=False)
    records = _records(out)
    for rec in records:
        assert rec["load_seconds"] > 0 and rec["plan_seconds"] > 0 and rec["run_seconds"] > 0
        assert rec["seconds"] == pytest.approx(rec["load_seconds"] + rec["plan_seconds"] + rec["run_seconds"])
        # the run's wall time from the start of the chunk's run: at least the item's own module time
        assert rec["run_seconds"] >= sum(rec["timings"].values())
    if kind == "slow":  # programs run one after another: the k-th finishes after k * 0.05 s
        runs = [r["run_seconds"] for r in records]
        assert runs == sorted(runs) and all(run >= 0.05 * (k + 1) for k, run in enumerate(runs))
    seconds = sorted(r["seconds"] for r in records)
    assert summary.latency["p50"] == pytest.approx((seconds[1] + seconds[2]) / 2)
    # the items were loaded and planned one after another, then run together
    before_run = sum(r["load_seconds"] + r["plan_seconds"] for r in records)
    assert summary.evaluated == 4 and summary.wall_seconds >= before_run + max(r["run_seconds"] for r in records)
    assert summary.items_per_second == pytest.approx(4 / summary.wall_seconds)
    saved = json.loads((tmp_path / "latency.summary.json").read_text())
    assert saved["evaluated"] == 4 and saved["wall_seconds"] == pytest.approx(summary.wall_seconds)
    assert saved["items_per_second"] == pytest.approx(summary.items_per_second)
    table = summary.to_table()
    assert "for the 4 item(s) evaluated now" in table and f"{summary.items_per_second:.2f} items/s" in table
    # a second call finds everything done: nothing evaluated now
    again = evaluate(items, _planner(server), interpreter, out_path=out, progress=False)
    assert (again.evaluated, again.items_per_second) == (0, 0.0) and again.latency == summary.latency


def test_with_samples_run_seconds_is_the_last_run_of_the_item(
    server: ScriptedServer, tmp_path: Path, photos: Path
) -> None:
    fakes.VQA_ANSWERS.update({"A?": "cat", "B?": "dog"})
    items = load_items(_rows_file(tmp_path, 2), "gqa", images=photos)
    server.script([_vqa_program("A?"), _vqa_program("B?"), _vqa_program("B?"), _vqa_program("A?")])
    out = tmp_path / "samples.jsonl"
    evaluate(items, _planner(server), _Slow(Interpreter(fakes.registry())), out_path=out, samples=2, progress=False)
    first, second = _records(out)
    # four runs one after another: the first item's last run ends after 2 x 0.05 s, the second's after 4 x
    assert 0.1 <= first["run_seconds"] < second["run_seconds"] and second["run_seconds"] >= 0.2


def test_summary_of_old_records_without_the_new_timings() -> None:
    summary = summarize([{"id": "a", "seconds": 2.0, "correct": True, "expected": "x"}])
    assert isinstance(summary, Summary) and summary.latency["p50"] == 2.0 and summary.wall_seconds == 0.0


def test_a_task_from_its_toml_file_alone_is_evaluated(
    server: ScriptedServer, tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compare_task(tmp_path, monkeypatch)
    data = tmp_path / "compare.jsonl"
    row = {
        "id": "c0",
        "before": "astronaut.png",
        "after": "coffee.png",
        "question": "What appeared?",
        "answer": "a cup",
    }
    data.write_text(json.dumps(row) + "\n")
    fakes.VQA_ANSWERS["What is on the table?"] = "cup"
    server.script([_vqa_program("What is on the table?", "AFTER")])
    out = tmp_path / "compare-results.jsonl"
    summary = evaluate(
        load_items(data, "compare", images=photos),
        _planner(server),
        _interpreter("native"),
        out_path=out,
        progress=False,
    )
    assert (summary.n, summary.correct) == (1, 1)
    (rec,) = _records(out)
    assert rec["task"] == "compare" and rec["answer"] == "cup" and rec["failure"] is None
    prompt = json.dumps(server.requests[0].body["messages"])
    assert "Comparison: What appeared?" in prompt and "BEFORE" in prompt  # the task file's label and inputs


# -- engines and the evaluation's own structure --------------------------------------------------


def _echo(chunk: Sequence[Item], planner: Any, interpreter: Any, **options: Any) -> list[dict[str, Any]]:
    return [
        {"id": it.id, "chunk": len(chunk), "planner": planner, "interpreter": interpreter, **options} for it in chunk
    ]


def test_the_local_engine_runs_the_work_it_is_given_chunk_by_chunk() -> None:
    a, b, c = (Item(k, "gqa", "Q?", {"IMAGE": f"{k}.png"}) for k in "abc")
    out = list(local_chunks([[a, b], [c]], _echo, "P", "I", samples=3))
    assert out == [
        [{"id": k, "chunk": 2, "planner": "P", "interpreter": "I", "samples": 3} for k in "ab"],
        [{"id": "c", "chunk": 1, "planner": "P", "interpreter": "I", "samples": 3}],
    ]


def test_the_evaluation_modules_depend_on_each_other_one_way_and_at_the_top() -> None:
    """No import cycle inside visprog.evaluation, and none hidden in a function: the engines are given the work."""
    folder = Path(runner.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[path.stem] = {
            node.module.rpartition(".")[2]
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("visprog.evaluation.")
        }
        nested = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            and node not in tree.body
            and any(name.startswith("visprog") for name in _imported(node))
        ]
        assert not nested, f"{path.name}: visprog imported inside a function on line(s) {nested}"
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert "runner" not in graph["engines"] and order.index("engines") < order.index("runner")


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return [alias.name for alias in node.names]
