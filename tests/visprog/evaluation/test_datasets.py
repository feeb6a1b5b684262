"""Data sets: our JSONL, GQA question JSON and NLVR2 JSONL, and the images each task's items must have."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visprog.errors import ConfigError
from visprog.evaluation.datasets import Item, load_items

DATA = Path(__file__).resolve().parents[2] / "data" / "eval"


def test_gqa_question_json_as_distributed(tmp_path: Path) -> None:
    items = load_items(DATA / "gqa_testdev_questions.json", "gqa", images=tmp_path)
    assert [i.id for i in items] == ["20968379", "201640614"]
    car = items[0]
    assert (car.text, car.answer, car.task) == ("What color is the car?", "red", "gqa")
    assert car.images == {"IMAGE": str(tmp_path / "n288870.jpg")}


def test_nlvr2_jsonl_as_distributed(tmp_path: Path) -> None:
    (tmp_path / "dev-850-0-img0.png").write_bytes(b"")
    (tmp_path / "dev-850-0-img1.png").write_bytes(b"")
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "train-10171-0-img0.png").write_bytes(b"")
    items = load_items(DATA / "nlvr2_dev.jsonl", "nlvr", images=tmp_path)
    assert [i.id for i in items] == ["dev-850-0-0", "dev-112-3-3", "train-10171-0-0"]
    first = items[0]
    assert first.answer == "False" and first.text.startswith("The left image contains twice")
    assert first.images == {"LEFT": str(tmp_path / "dev-850-0-img0.png"), "RIGHT": str(tmp_path / "dev-850-0-img1.png")}
    # no local file: the URL is kept
    assert items[1].images["LEFT"] == "https://example.org/nlvr2/dev-112-3-img0.jpg"
    # the train split's numbered sub-folders
    assert items[2].images["LEFT"] == str(tmp_path / "7" / "train-10171-0-img0.png")
    assert items[2].images["RIGHT"] == "https://example.org/nlvr2/train-10171-0-img1.jpg"


def test_our_jsonl_paths_and_errors(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": 1, "image": "a.png", "question": "Q?", "answer": "yes"}\n\n')
    (item,) = load_items(data, "gqa")
    assert item == Item("1", "gqa", "Q?", {"IMAGE": str(tmp_path / "a.png")}, "yes")
    data.write_text('{"id": 1, "question": "Q?"}\n')
    with pytest.raises(ConfigError, match=r"d.jsonl:1: missing key 'image'"):
        load_items(data, "gqa")
    data.write_text('{"id": 1, "image": "a", "question": "Q"}\n{"id": 1, "image": "b", "question": "R"}\n')
    with pytest.raises(ConfigError, match="occurs more than once"):
        load_items(data, "gqa")
    with pytest.raises(ConfigError, match="unknown task 'vqa'"):
        load_items(data, "vqa")


def test_the_items_must_have_the_images_the_task_reads(tmp_path: Path) -> None:
    gqa_rows = tmp_path / "gqa.jsonl"
    gqa_rows.write_text(json.dumps({"id": "q1", "image": "a.png", "question": "Q?"}) + "\n")
    with pytest.raises(ConfigError) as info:
        load_items(gqa_rows, "nlvr")
    assert str(info.value).startswith(
        f"{gqa_rows}:1: item 'q1' has one image (IMAGE) but task nlvr needs two images (LEFT and RIGHT) "
        "(keys 'left' and 'right')"
    )
    nlvr_rows = tmp_path / "nlvr.jsonl"
    nlvr_rows.write_text(
        json.dumps({"id": "n0", "image": "a.png", "statement": "S"})
        + "\n"
        + json.dumps({"id": "n1", "left": "a.png", "right": "b.png", "statement": "S"})
        + "\n"
    )
    for task in ("gqa", "edit", "tag"):  # the first offending line is named
        both = rf"nlvr\.jsonl:2: item 'n1' has two images \(LEFT and RIGHT\) but task {task} "
        with pytest.raises(ConfigError, match=both):
            load_items(nlvr_rows, task)
    with pytest.raises(ConfigError, match=r"nlvr\.jsonl:1: item 'n0' has one image \(IMAGE\) but task nlvr needs"):
        load_items(nlvr_rows, "nlvr")
    # the files as distributed
    gqa_file = r"gqa_testdev_questions\.json: item '20968379' has one image \(IMAGE\) but task nlvr"
    with pytest.raises(ConfigError, match=gqa_file):
        load_items(DATA / "gqa_testdev_questions.json", "nlvr")
    with pytest.raises(ConfigError, match=r"nlvr2_dev\.jsonl:1: item 'dev-850-0-0' has two images \(LEFT and RIGHT\)"):
        load_items(DATA / "nlvr2_dev.jsonl", "gqa")


def test_a_gqa_file_with_an_entry_lacking_its_image_id_says_so(tmp_path: Path) -> None:
    data = tmp_path / "questions.json"
    data.write_text(json.dumps({"1": {"imageId": "n1", "question": "Q?"}, "2": {"question": "R?", "answer": "x"}}))
    with pytest.raises(ConfigError) as info:
        load_items(data, "gqa")
    assert str(info.value) == (
        f"{data}: looks like a GQA question file (question id → entry), but entry '2' lacks 'imageId'"
    )
    data.write_text(json.dumps({"1": {"answer": "x"}}))
    with pytest.raises(ConfigError, match=r"entry '1' lacks 'imageId' and 'question'"):
        load_items(data, "gqa")
    data.write_text(json.dumps({"1": {"imageId": "n1", "question": "Q?"}, "2": "R?"}))
    with pytest.raises(ConfigError, match=r"entry '2' is a str, not an object"):
        load_items(data, "gqa")
    for empty in ("{}", "[]", "", "\n\n"):
        data.write_text(empty)
        with pytest.raises(ConfigError, match=r"questions\.json: the file has no items"):
            load_items(data, "gqa")
    # a JSONL file of one line is still one item, even with an object inside
    data.write_text(json.dumps({"id": "x", "image": "a.png", "question": "Q?", "meta": {"imageId": "n1"}}) + "\n")
    (item,) = load_items(data, "gqa")
    assert item.id == "x"


#: A task defined by its TOML file alone: two images, BEFORE and AFTER.
COMPARE_TOML = """
task = "compare"
description = "questions about a pair of images, before and after"
inputs = ["BEFORE", "AFTER"]
input_label = "Comparison"

[[examples]]
input = "What appeared?"
program = '''
ANSWER0=Vqa(image=AFTER, question='What is this?')
FINAL_RESULT=Result(var=ANSWER0)
'''
"""


def compare_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put the task ``compare`` in a folder named by ``VISPROG_TASKS``."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "compare.toml").write_text(COMPARE_TOML)
    monkeypatch.setenv("VISPROG_TASKS", str(folder))


def test_a_task_from_its_toml_file_alone_reads_its_images_by_its_input_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compare_task(tmp_path, monkeypatch)
    data = tmp_path / "compare.jsonl"
    row = {"id": "c0", "before": "a.png", "after": "https://example.org/b.png", "question": "What appeared?"}
    data.write_text(json.dumps({**row, "answer": "cup"}) + "\n")
    (item,) = load_items(data, "compare")
    assert item == Item(
        "c0", "compare", "What appeared?", {"BEFORE": str(tmp_path / "a.png"), "AFTER": row["after"]}, "cup"
    )
    data.write_text(json.dumps({"id": "q0", "image": "a.png", "question": "Q?"}) + "\n")
    with pytest.raises(ConfigError) as info:
        load_items(data, "compare")
    assert str(info.value) == (
        f"{data}:1: item 'q0' has one image (IMAGE) but task compare needs two images (BEFORE and AFTER) "
        "(keys 'before' and 'after'): is --task right for this file?"
    )
    data.write_text(json.dumps({"id": "q0", "question": "Q?"}) + "\n")
    with pytest.raises(ConfigError, match=r"compare\.jsonl:1: missing key 'before'"):
        load_items(data, "compare")
    monkeypatch.delenv("VISPROG_TASKS")
    with pytest.raises(ConfigError, match="unknown task 'compare': expected one of "):
        load_items(data, "compare")


def test_the_distributed_formats_name_their_images_as_the_task_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GQA's one image and NLVR2's two go to the task's inputs in order, whatever they are called."""
    example = '[[examples]]\ninput = "x"\nprogram = "A=Vqa(image={0}, question=\'q\')\\nR=Result(var=A)"\n'
    (tmp_path / "one.toml").write_text(
        'task = "one"\ninputs = ["PHOTO"]\ninstructions = "x"\n' + example.format("PHOTO"), encoding="utf-8"
    )
    (tmp_path / "two.toml").write_text(
        'task = "two"\ninputs = ["BEFORE", "AFTER"]\ninstructions = "x"\n' + example.format("BEFORE"),
        encoding="utf-8",
    )
    monkeypatch.setenv("VISPROG_TASKS", str(tmp_path))
    gqa = load_items(DATA / "gqa_testdev_questions.json", "one")
    assert gqa and all(set(item.images) == {"PHOTO"} for item in gqa)
    nlvr = load_items(DATA / "nlvr2_dev.jsonl", "two")
    assert nlvr and all(list(item.images) == ["BEFORE", "AFTER"] for item in nlvr)
    assert all(item.images["BEFORE"] != item.images["AFTER"] for item in nlvr)
