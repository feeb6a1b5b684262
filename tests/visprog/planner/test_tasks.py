"""A task is one TOML file: added in a folder of $VISPROG_TASKS, it reaches every surface with no code."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest

import visprog
from tests.llm_server import ScriptedServer
from visprog.apps.cli import main
from visprog.apps.webapp_actions import infer_task, plan_and_run, task_choices
from visprog.evaluation.datasets import load_items
from visprog.planner.tasks import get_task, tasks

COUNTING = textwrap.dedent(
    """\
    task = "counting"
    description = "counting things in one photo"
    inputs = ["PHOTO"]
    input_label = "Count"
    verb = "count"
    web_label = "Count things in a photo"
    answer = "text"
    first_words = ["count", "tally"]

    [[examples]]
    input = "the dogs"
    program = \"\"\"
    BOX0=Loc(image=PHOTO, object='dog')
    ANSWER0=Count(box=BOX0)
    FINAL_RESULT=Result(var=ANSWER0)
    \"\"\"
    """
)
PROGRAM = "BOX0=Loc(image=PHOTO, object='cat')\nANSWER0=Count(box=BOX0)\nFINAL_RESULT=Result(var=ANSWER0)"


@pytest.fixture
def counting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "my-tasks"
    folder.mkdir()
    (folder / "counting.toml").write_text(COUNTING, encoding="utf-8")
    monkeypatch.setenv("VISPROG_TASKS", str(folder))
    return folder


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_a_task_file_alone_shows_in_the_cli_eval_and_the_web_app(
    counting: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert get_task("counting").source == str(counting / "counting.toml")
    # visprog --help: a command of its own, described by the file
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert "count" in help_text and "counting things in one photo (counting)" in help_text
    with pytest.raises(SystemExit):
        main(["count", "--help"])
    command_help = capsys.readouterr().out
    assert "PHOTO" in command_help and "the count" in command_help
    assert "--output" not in command_help  # its answer is text, not an image
    # visprog eval --task: one of the choices
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "counting" in capsys.readouterr().out.split("--task")[1].split("}")[0]
    # the web app: a choice with its label, and auto picks it by its first words
    assert ("Count things in a photo", "counting") in task_choices()
    assert infer_task("Count the cats", 1) == "counting"
    assert infer_task("How many cats?", 1) == "gqa"
    # the checker's default inputs take in its input
    assert list(visprog.check(PROGRAM).used_inputs) == ["PHOTO"]


def test_the_web_app_offers_it(counting: Path) -> None:
    gr = pytest.importorskip("gradio")
    from visprog.apps.webapp import build_app

    app = build_app(planner_factory=lambda: pytest.fail("the planner is made on first request"))
    radio = next(b for b in app.blocks.values() if isinstance(b, gr.Radio) and b.elem_id == "vp-task")
    assert ("Count things in a photo", "counting") in [tuple(c) for c in radio.choices]
    assert "count, tally → Count things in a photo" in (radio.info or "")


def test_its_command_plans_with_its_prompts(counting: Path, llm_server: ScriptedServer, tmp_path: Path) -> None:
    llm_server.script([PROGRAM])
    photo = tmp_path / "photo.png"
    from PIL import Image as PILImage

    PILImage.new("RGB", (8, 8)).save(photo)
    code, out, err = _cli(
        "count", str(photo), "the cats", "--plan-only", "--no-cache", "--base-url", llm_server.url, "--model", "tiny"
    )
    assert code == 0, err
    assert out.strip() == PROGRAM
    messages = llm_server.requests[0].body["messages"]
    assert messages[-1]["content"] == "Count: the cats"
    assert "The program's input is PHOTO" in messages[0]["content"]


def test_its_data_sets_load_with_its_inputs(counting: Path, tmp_path: Path) -> None:
    data = tmp_path / "counting.jsonl"
    data.write_text(json.dumps({"id": "1", "photo": "a.png", "question": "the cats", "answer": 2}) + "\n")
    (item,) = load_items(data, "counting")
    assert (item.task, item.images) == ("counting", {"PHOTO": str(tmp_path / "a.png")})


def test_the_web_app_runs_it_on_the_one_image_upload(
    counting: Path, llm_server: ScriptedServer, tmp_path: Path
) -> None:
    from PIL import Image as PILImage
    from skimage import data

    from tests import fakes
    from visprog.llm import client_from_options
    from visprog.planner.core import Planner

    photo = tmp_path / "photo.png"
    PILImage.fromarray(data.chelsea()).save(photo)
    llm_server.script([PROGRAM])
    planner = Planner(
        client_from_options(base_url=llm_server.url, model="tiny", max_retries=0, timeout=5),
        registry=fakes.registry(),
        cache=False,
    )
    out = plan_and_run("Count the cats", "auto", str(photo), planner=planner)
    assert out.ok, out.message
    assert (out.task, out.answer) == ("counting", "1")
    assert out.title == "Done (Count things in a photo, chosen from the text)"
    assert out.message.endswith("; 1 LLM request")


def test_without_the_variable_only_the_packaged_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VISPROG_TASKS", raising=False)
    assert list(tasks()) == ["edit", "gqa", "nlvr", "tag"]
    assert [value for _, value in task_choices()] == ["auto", "edit", "gqa", "nlvr", "tag"]


def test_a_broken_task_file_is_a_clear_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bad.toml").write_text("inputs = ['IMAGE']\nanswer = 'maybe'\n", encoding="utf-8")
    monkeypatch.setenv("VISPROG_TASKS", str(tmp_path))
    code, _, err = _cli("check", "FINAL_RESULT=Result(var=IMAGE)")
    assert code == 2
    assert err.startswith(f"error: {tmp_path / 'bad.toml'}: key 'answer'")
    assert "Traceback" not in err


def test_a_task_whose_verb_is_a_visprog_command_is_left_out_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "clash.toml").write_text(COUNTING.replace('verb = "count"', 'verb = "check"'), encoding="utf-8")
    monkeypatch.setenv("VISPROG_TASKS", str(tmp_path))
    program = tmp_path / "p.vp"
    program.write_text(PROGRAM.replace("PHOTO", "IMAGE"), encoding="utf-8")
    code, out, err = _cli("check", str(program))
    assert code == 0, err
    assert "ok, 3 steps" in out
    assert "task 'counting'" in err and "'check' is one of visprog's own commands" in err


def test_a_task_input_may_share_a_name_with_an_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llm_server: ScriptedServer
) -> None:
    """An input named TEXT (or TASK, OUTPUT, ...) is its own argument, not the question's."""
    (tmp_path / "texty.toml").write_text(COUNTING.replace("PHOTO", "TEXT"), encoding="utf-8")
    monkeypatch.setenv("VISPROG_TASKS", str(tmp_path))
    from PIL import Image as PILImage

    photo = tmp_path / "photo.png"
    PILImage.new("RGB", (8, 8)).save(photo)
    program = PROGRAM.replace("PHOTO", "TEXT")
    llm_server.script([program])
    code, out, err = _cli(
        "count", str(photo), "the cats", "--plan-only", "--no-cache", "--base-url", llm_server.url, "--model", "tiny"
    )
    assert code == 0, err
    assert out.strip() == program
    assert llm_server.requests[0].body["messages"][-1]["content"] == "Count: the cats"


def test_the_web_app_runs_an_edited_program_of_it_on_the_one_image_upload(counting: Path, tmp_path: Path) -> None:
    from PIL import Image as PILImage

    from tests import fakes
    from visprog.apps.webapp_actions import run_program

    photo = tmp_path / "photo.png"
    PILImage.new("RGB", (16, 16)).save(photo)
    out = run_program(PROGRAM, str(photo), registry=fakes.registry())
    assert out.ok, out.message
