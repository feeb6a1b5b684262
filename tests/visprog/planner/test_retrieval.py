"""Retrieved in-context examples: BM25 picks the k examples of a task's pool most like the text.

The pools are the packaged ones, so these tests also say that the pools cover
what users ask: a counting question is shown counting examples, an edit about
faces is shown face examples. The planner, its cache, the command line and the
config file pass ``k`` through.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image as PILImage

from tests import fakes
from tests.llm_server import ScriptedServer
from visprog.apps.cli import main
from visprog.errors import ConfigError
from visprog.llm import client_from_options
from visprog.planner.cache import PlanCache
from visprog.planner.core import Planner
from visprog.planner.prompts import build_messages
from visprog.planner.retrieval import DEFAULT_EXAMPLES, bm25_scores, check_examples, select_examples, words
from visprog.planner.tasks import Example, get_task
from visprog.running.plugins import default_registry
from visprog.solving import create_planner

GOOD = "BOX0=Loc(image=IMAGE, object='dog')\nANSWER0=Count(box=BOX0)\nFINAL_RESULT=Result(var=ANSWER0)"


def _pool(*inputs: str) -> tuple[Example, ...]:
    return tuple(
        Example(text, f"ANSWER0=Vqa(image=IMAGE, question='{i}')\nFINAL_RESULT=Result(var=ANSWER0)")
        for i, text in enumerate(inputs)
    )


def _shown(messages: list[dict[str, str]]) -> list[str]:
    """The example inputs a prompt shows, in order (without their label)."""
    return [m["content"].split(": ", 1)[1] for m in messages[1:-1] if m["role"] == "user"]


# --------------------------------------------------------------------------- words and scores


def test_words_are_lower_case_singular_and_american() -> None:
    assert words("How many DOGS are on the sofa?") == ["how", "many", "dog", "are", "on", "sofa"]
    assert words("Hide Taylor Swift's faces") == ["hide", "taylor", "swift", "face"]
    assert words("What colour is the grey bus? 2 glass") == ["what", "color", "is", "gray", "bus", "2", "glass"]


def test_bm25_weighs_rare_words_and_ignores_what_no_document_has() -> None:
    docs = ["how many dogs", "how many cats", "what color is the cat", "how many birds are on the wire"]
    scores = bm25_scores(docs, "How many cats?")
    assert scores[1] == max(scores) and scores[1] > scores[0] > 0
    assert scores[2] > 0  # 'cat' alone: rarer than 'how many'
    assert scores[0] > scores[3] > 0  # the same words in a longer document count for less
    assert bm25_scores(docs, "zebra xylophone") == [0.0] * 4
    assert bm25_scores([], "dogs") == []


# --------------------------------------------------------------------------- choosing from the packaged pools


def test_a_counting_question_gets_counting_examples() -> None:
    chosen = select_examples(get_task("gqa").examples, "How many dogs are lying on the grass?")
    assert len(chosen) == DEFAULT_EXAMPLES
    counting = [e for e in chosen if "Count(" in e.program]
    assert len(counting) >= DEFAULT_EXAMPLES - 1
    assert all(e.input.startswith("How many") and "Count(" in e.program for e in chosen[-3:])
    assert chosen[-1].input == "How many dogs and cats are there in all?"  # dogs: the most similar, last


def test_an_edit_about_faces_gets_face_examples() -> None:
    chosen = select_examples(get_task("edit").examples, "Hide the faces of the kids with a winking face emoji")
    assert all("FaceDet(" in e.program and "Emoji(" in e.program for e in chosen[-3:])
    assert sum("FaceDet(" in e.program for e in chosen) >= 5
    blur = select_examples(get_task("edit").examples, "Blur the background behind the dog", 3)
    assert all("BgBlur(" in e.program for e in blur)


@pytest.mark.parametrize(
    ("task", "text", "module"),
    [
        ("gqa", "What does the sign on the shop say?", "Ocr("),
        ("gqa", "Is there a sign that says open?", "Text("),
        ("gqa", "Is the cup to the left of the laptop?", "CropLeftOf("),
        ("nlvr", "The left image shows more bottles than the right image.", "Count("),
        ("edit", "Keep the bus in colour and make the rest grey", "ColorPop("),
        ("tag", "Tag the characters of The Simpsons", "List("),
    ],
)
def test_the_most_similar_example_uses_what_the_text_needs(task: str, text: str, module: str) -> None:
    assert module in select_examples(get_task(task).examples, text)[-1].program


def test_the_most_similar_example_is_last_and_scores_rise() -> None:
    pool = _pool("what color is the car", "how many dogs", "how many dogs are on the red sofa", "is it raining")
    # two examples share words with the text, the shorter one more closely; the third place goes to the
    # pool's first example (nothing in common), shown first
    chosen = [e.input for e in select_examples(pool, "How many dogs?", 3)]
    assert chosen == ["what color is the car", "how many dogs are on the red sofa", "how many dogs"]
    # 'are' is in one example only: it tips the balance
    chosen = [e.input for e in select_examples(pool, "How many dogs are there?", 2)]
    assert chosen == ["how many dogs", "how many dogs are on the red sofa"]


@pytest.mark.parametrize("k", [0, 1, 3, DEFAULT_EXAMPLES, 40, 1000])
def test_k_bounds_the_examples(k: int) -> None:
    pool = get_task("nlvr").examples
    chosen = select_examples(pool, "Both images show a dog.", k)
    assert len(chosen) == min(k, len(pool))
    assert len(set(chosen)) == len(chosen) and set(chosen) <= set(pool)
    messages = build_messages(get_task("nlvr"), default_registry(), "Both images show a dog.", k)
    assert len(messages) == 2 + 2 * min(k, len(pool))


def test_k_0_shows_no_examples() -> None:
    assert select_examples(get_task("gqa").examples, "How many dogs?", 0) == ()
    messages = build_messages(get_task("gqa"), default_registry(), "How many dogs?", 0)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[-1]["content"] == "Question: How many dogs?"


def test_a_small_pool_is_shown_whole() -> None:
    pool = _pool("how many cats", "what is it")
    assert {e.input for e in select_examples(pool, "How many cats?")} == {"how many cats", "what is it"}
    assert select_examples(pool, "How many cats?")[-1].input == "how many cats"


def test_ties_keep_the_pool_order() -> None:
    pool = _pool("dog one", "dog two", "dog six", "cat ten")
    # three equal scores, two places: the first two of the pool, in pool order; the same every time
    assert [e.input for e in select_examples(pool, "dog", 2)] == ["dog one", "dog two"]
    assert [select_examples(pool, "dog", 2) for _ in range(3)] == [select_examples(pool, "dog", 2)] * 3
    # nothing in common with any example: the first k of the pool, in order
    assert [e.input for e in select_examples(pool, "zebra", 3)] == ["dog one", "dog two", "dog six"]
    # one better match goes last, after the tied ones in pool order
    assert [e.input for e in select_examples(pool, "dog six", 3)] == ["dog one", "dog two", "dog six"]


def test_the_choice_is_the_same_in_every_process() -> None:
    """Scores are sums of floats: they must not depend on the order of a set, which varies with PYTHONHASHSEED."""
    script = (
        "from visprog.planner.tasks import tasks\n"
        "from visprog.planner.retrieval import bm25_scores, select_examples\n"
        "for t in tasks().values():\n"
        "    for e in t.examples:\n"
        "        text = e.input + ' of the red one on the left'\n"
        "        print(bm25_scores([x.input for x in t.examples], text))\n"
        "        print([x.input for x in select_examples(t.examples, text, 5)])\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "examples must be 0 (no examples) or more, got -1"),
        (2.5, "examples must be a whole number of examples (0 for none), got 2.5"),
        ("8", "examples must be a whole number of examples (0 for none), got '8'"),
        (True, "got True"),
    ],
)
def test_a_bad_number_of_examples_is_an_error_naming_the_setting(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_examples(value)
    with pytest.raises(ConfigError, match=r"^--examples must"):
        check_examples(value, "--examples")
    with pytest.raises(ConfigError, match=r"^examples must"):
        select_examples(get_task("gqa").examples, "q", value)  # type: ignore[arg-type]
    backend = client_from_options(base_url="http://127.0.0.1:9/v1", model="tiny")
    with pytest.raises(ConfigError, match=r"^examples must"):
        Planner(backend, examples=value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the planner and its cache


def _planner(server: ScriptedServer, cache: PlanCache | bool = False, **options: object) -> Planner:
    backend = client_from_options(base_url=server.url, model="tiny-planner", max_retries=0, timeout=5)
    return Planner(backend, registry=fakes.registry(), cache=cache, **options)  # type: ignore[arg-type]


def test_the_planner_sends_the_k_most_similar_examples(llm_server: ScriptedServer) -> None:
    llm_server.script([GOOD, GOOD, GOOD])
    text = "How many dogs are lying on the grass?"
    assert _planner(llm_server).examples == DEFAULT_EXAMPLES
    _planner(llm_server).plan("gqa", text)
    _planner(llm_server, examples=3).plan("gqa", text)
    _planner(llm_server, examples=0).plan("gqa", text)
    default, three, none = (r.body["messages"] for r in llm_server.requests)
    expected = [e.input for e in select_examples(get_task("gqa").examples, text)]
    assert _shown(default) == expected
    assert _shown(three) == expected[-3:]  # the three most similar, still most similar last
    assert _shown(none) == [] and len(none) == 2


def test_the_cache_key_changes_with_k(llm_server: ScriptedServer, tmp_path: Path) -> None:
    cache = PlanCache(tmp_path / "plans.sqlite")
    llm_server.script([GOOD, GOOD, GOOD])
    text = "How many dogs are there?"
    assert not _planner(llm_server, cache, examples=2).plan("gqa", text).cached
    assert not _planner(llm_server, cache, examples=3).plan("gqa", text).cached  # another prompt: planned again
    assert not _planner(llm_server, cache, examples=0).plan("gqa", text).cached
    assert len(llm_server.requests) == 3
    for k in (2, 3, 0):
        assert _planner(llm_server, cache, examples=k).plan("gqa", text).cached
    assert len(llm_server.requests) == 3


# --------------------------------------------------------------------------- command line, config file, API


def _ask(server: ScriptedServer, tmp_path: Path, *extra: str) -> tuple[int, str]:
    photo = tmp_path / "photo.png"
    PILImage.new("RGB", (8, 8)).save(photo)
    argv = ["ask", str(photo), "How many dogs?", "--plan-only", "--no-cache", "--base-url", server.url]
    out, err = io.StringIO(), io.StringIO()
    code = main([*argv, "--model", "tiny", *extra], out, err)
    return code, err.getvalue()


def test_examples_on_the_command_line_and_in_the_config_file(llm_server: ScriptedServer, tmp_path: Path) -> None:
    llm_server.script([GOOD] * 4)
    config = tmp_path / "visprog.toml"
    config.write_text("[llm]\nexamples = 1\n")
    assert _ask(llm_server, tmp_path, "--examples", "2") == (0, "")
    assert _ask(llm_server, tmp_path, "--config", str(config)) == (0, "")
    assert _ask(llm_server, tmp_path, "--config", str(config), "--examples", "0") == (0, "")  # the flag wins
    assert _ask(llm_server, tmp_path) == (0, "")
    counts = [len(_shown(r.body["messages"])) for r in llm_server.requests]
    assert counts == [2, 1, 0, DEFAULT_EXAMPLES]


@pytest.mark.parametrize(
    ("table", "flags", "message"),
    [
        ("", ["--examples", "-3"], "error: --examples must be 0 (no examples) or more, got -3"),
        ("examples = -1", [], "[llm] examples must be 0 (no examples) or more, got -1"),
        ('examples = "all"', [], "[llm] examples must be a whole number of examples (0 for none), got 'all'"),
        ("examples = 2.0", [], "[llm] examples must be a whole number of examples (0 for none), got 2.0"),
        ("exampels = 2", [], "[llm] has no setting 'exampels' (did you mean 'examples'?)"),
    ],
)
def test_a_bad_examples_setting_is_an_error_naming_it(
    llm_server: ScriptedServer, tmp_path: Path, table: str, flags: list[str], message: str
) -> None:
    config = tmp_path / "visprog.toml"
    config.write_text(f"[llm]\n{table}\n")
    code, err = _ask(llm_server, tmp_path, "--config", str(config), *flags)
    assert code == 1
    assert message in err
    if table:
        assert str(config) in err
    assert llm_server.requests == []  # refused before anything was sent


def test_a_flag_that_is_not_a_number_is_a_usage_error(llm_server: ScriptedServer, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        _ask(llm_server, tmp_path, "--examples", "many")
    assert info.value.code == 2


def test_create_planner_takes_examples(llm_server: ScriptedServer) -> None:
    assert create_planner(base_url=llm_server.url, model="tiny", examples=5).examples == 5
    assert create_planner(base_url=llm_server.url, model="tiny").examples == DEFAULT_EXAMPLES
    with pytest.raises(ConfigError, match="examples must be 0"):
        create_planner(base_url=llm_server.url, model="tiny", examples=-2)
