"""The tasks and the planner's prompts: packaged task files, the module reference rendered from the registry, messages.

Every in-context example of every packaged task is a test of its own: it must
parse and type-check against the default registry with the task's inputs, and
run on the fake modules (tests/fakes.py) without error, giving the kind of
result its task promises.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import textwrap
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from skimage import data

import visprog
from tests import fakes
from tests.fakes import check
from visprog.errors import ConfigError, ProgramCheckError
from visprog.language.format import format_program
from visprog.language.parser import parse
from visprog.language.signatures import Registry
from visprog.language.values import Image
from visprog.planner.prompts import build_messages, module_reference, repair_messages
from visprog.planner.retrieval import DEFAULT_EXAMPLES
from visprog.planner.tasks import Example, Task, get_task, guess_task, input_names, load_task, tasks
from visprog.running.interpreter import Interpreter
from visprog.running.plugins import default_registry
from visprog.running.runtime import Runtime

#: The packaged tasks.
TASKS = tuple(tasks())

#: FaceDet's cascade backend ships with scikit-image: no download.
RUNTIME = Runtime(modules={"FaceDet": {"backend": "cascade"}})

EXPECTED_INPUTS = {"gqa": ("IMAGE",), "nlvr": ("LEFT", "RIGHT"), "edit": ("IMAGE",), "tag": ("IMAGE",)}
EXPECTED_LABELS = {"gqa": "Question", "nlvr": "Statement", "edit": "Instruction", "tag": "Instruction"}
EXPECTED_VERBS = {"gqa": "ask", "nlvr": "verify", "edit": "edit", "tag": "tag"}
EXPECTED_ANSWERS = {"gqa": "text", "nlvr": "yes/no", "edit": "image", "tag": "image"}
#: each task's pool is large enough for the prompt to show the examples most like the text
MIN_EXAMPLES = {"gqa": 40, "nlvr": 24, "edit": 20, "tag": 12}

#: the inputs each example runs on: astronaut and chelsea, as IMAGE or as LEFT/RIGHT both ways round
IMAGE_SETS = {
    ("IMAGE",): {"astronaut": {"IMAGE": "astronaut"}, "chelsea": {"IMAGE": "chelsea"}},
    ("LEFT", "RIGHT"): {
        "astronaut-chelsea": {"LEFT": "astronaut", "RIGHT": "chelsea"},
        "chelsea-astronaut": {"LEFT": "chelsea", "RIGHT": "astronaut"},
    },
}

STEP = re.compile(r"^([A-Z][A-Z0-9_]*)=([A-Za-z]\w*)\(")
FINAL = re.compile(r"^FINAL_RESULT=Result\(var=[A-Z][A-Z0-9_]*\)$")


@visprog.module
def Invert(image: Image) -> Image:
    """Invert the colours of an image, like a photographic negative.

    Args:
        image: the image whose colours to invert.
    """
    from PIL import ImageOps

    return ImageOps.invert(image.convert("RGB"))


@functools.cache
def _image(name: str) -> PILImage.Image:
    return PILImage.fromarray(data.chelsea() if name == "chelsea" else data.astronaut())


def _slug(text: str) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower())[:6])


def _examples() -> list[Any]:
    params = []
    for task in TASKS:
        for i, example in enumerate(get_task(task).examples, start=1):
            params.append(pytest.param(task, example, id=f"{task}-{i:02d}-{_slug(example.input)}"))
    return params


def _runs() -> list[Any]:
    params = []
    for task in TASKS:
        prompts = get_task(task)
        for i, example in enumerate(prompts.examples, start=1):
            for images_id, images in IMAGE_SETS[prompts.inputs].items():
                ident = f"{task}-{i:02d}-{_slug(example.input)}-{images_id}"
                params.append(pytest.param(task, example, images, id=ident))
    return params


@pytest.fixture(autouse=True)
def _fresh_fakes() -> None:
    fakes.reset()


def _reference_entries(reference: str) -> dict[str, str]:
    """Entry text by its first line (the signature); entries are separated by blank lines."""
    entries = {}
    for block in reference.split("\n\n"):
        head, _, rest = block.partition("\n")
        assert head and not head[0].isspace(), block
        assert all(line.startswith(" ") for line in rest.splitlines()), block
        entries[head] = block
    return entries


# --------------------------------------------------------------------------- packaged prompt sets


@pytest.mark.parametrize("task", TASKS)
def test_packaged_prompt_set(task: str) -> None:
    prompts = get_task(task)
    assert isinstance(prompts, Task)
    assert prompts.name == task
    assert prompts.command == EXPECTED_VERBS[task]
    assert prompts.answer == EXPECTED_ANSWERS[task]
    assert prompts.label and prompts.label != task
    assert prompts.source == f"visprog/prompts/{task}.toml"
    assert prompts.inputs == EXPECTED_INPUTS[task]
    assert prompts.input_label == EXPECTED_LABELS[task]
    assert prompts.description and "\n" not in prompts.description
    assert len(prompts.instructions) > 200
    assert len(prompts.examples) >= MIN_EXAMPLES[task]
    assert all(isinstance(e, Example) for e in prompts.examples)
    inputs = [e.input for e in prompts.examples]
    assert len(set(inputs)) == len(inputs), "two examples have the same input"
    assert len({e.program for e in prompts.examples}) == len(inputs), "two examples have the same program"
    for e in prompts.examples:
        assert e.program == e.program.strip()
        assert e.input == e.input.strip() and "\n" not in e.input
    # loading is deterministic and the result immutable
    assert get_task(task) == prompts
    assert get_task(task.upper()) == prompts
    with pytest.raises(dataclasses.FrozenInstanceError):
        prompts.name = "other"  # type: ignore[misc]


def test_packaged_files_are_package_data() -> None:
    files = {f.name for f in resources.files("visprog.prompts").iterdir() if f.name.endswith(".toml")}
    assert files == {f"{task}.toml" for task in TASKS}


def test_examples_use_the_whole_language_of_their_tasks() -> None:
    def modules(task: str) -> set[str]:
        return {m.group(2) for e in get_task(task).examples for m in map(STEP.match, e.program.splitlines()) if m}

    crops = {"Crop", "CropLeftOf", "CropRightOf", "CropAbove", "CropBelow"}
    assert crops | {"Loc", "Count", "Vqa", "Eval", "Result", "Ocr", "Text"} <= modules("gqa")
    assert {"Vqa", "Loc", "Count", "Eval", "Result", "CropLeftOf"} <= modules("nlvr")
    assert {"Seg", "Select", "FaceDet", "Loc", "Replace", "ColorPop", "BgBlur", "Emoji", "Crop"} <= modules("edit")
    assert {"FaceDet", "Loc", "List", "Classify", "Tag"} <= modules("tag")
    everything = set().union(*(modules(t) for t in TASKS))
    assert crops <= everything
    nlvr_evals = " ".join(e.program for e in get_task("nlvr").examples)
    for word in (" and ", " or ", " xor ", "not ", "==", ">"):
        assert word in nlvr_evals, word


@pytest.mark.parametrize(("task", "example"), _examples())
def test_example_checks_against_the_default_registry(task: str, example: Example) -> None:
    prompts = get_task(task)
    registry = default_registry()
    checked = check(example.program, prompts.inputs, registry=registry)
    assert set(checked.used_inputs) <= set(prompts.inputs)
    assert checked.steps[checked.result].step.is_result
    lines = [line for line in example.program.splitlines() if line.strip()]
    assert len(parse(example.program).steps) == len(lines)
    assert FINAL.match(lines[-1]), lines[-1]
    assert format_program(checked, registry).rstrip("\n") == example.program, "not canonical (see visprog fmt)"
    for line in lines[:-1]:
        m = STEP.match(line)
        assert m, f"not a plain step: {line}"
        spec = registry.get(m.group(2))
        assert spec is not None and spec.name == m.group(2), f"not a canonical module name: {line}"


@pytest.mark.parametrize(("task", "example", "images"), _runs())
def test_example_runs_on_the_fake_modules(task: str, example: Example, images: dict[str, str]) -> None:
    inputs = {name: _image(picture) for name, picture in images.items()}
    trace = Interpreter(fakes.registry(), runtime=RUNTIME).run(example.program, inputs)
    assert trace.ok
    result = trace.result
    if task == "nlvr":
        assert isinstance(result, bool) or result in ("yes", "no"), f"expected True/False, got {result!r}"
    elif task in ("edit", "tag"):
        assert isinstance(result, PILImage.Image), f"expected an image, got {result!r}"
    else:
        assert isinstance(result, (str, int, float, bool)), f"expected a short answer, got {result!r}"
        assert str(result).strip()


# --------------------------------------------------------------------------- the module reference


def test_module_reference_lists_every_module_exactly_as_registered() -> None:
    registry = default_registry()
    reference = module_reference(registry)
    entries = _reference_entries(reference)
    # one entry per module, in registry order, headed by its exact signature
    assert list(entries) == [spec.signature() for spec in registry]
    for spec in registry:
        entry = entries[spec.signature()]
        assert " ".join(spec.summary.split()) in entry
        for p in spec.params:
            assert f"{p.name}: {' '.join(p.description.split())}" in entry, (spec.name, p.name)
    # Eval and Result are explained by their docstrings
    assert "small safe expression language" in entries[registry["Eval"].signature()]
    assert "{NAME}" in entries[registry["Eval"].signature()]
    assert "Mark the program's output." in entries[registry["Result"].signature()]
    # aliases are left out
    for alias in ("CROP_FRONTOF", "CROP_BEHIND", "FaceDetect", "aliases", "plugin '"):
        assert alias not in reference
    # modules with and without a learned model alike
    for name in ("Loc", "Vqa", "Seg", "Select", "FaceDet", "Classify", "Replace", "List", "Crop", "Count", "Tag"):
        assert f"\n{name}(" in "\n" + reference, name


def test_module_reference_is_deterministic() -> None:
    registry = default_registry()
    assert module_reference(registry) == module_reference(registry.copy())
    prompts = get_task("gqa")
    assert build_messages(prompts, registry, "Q?") == build_messages(prompts, registry.copy(), "Q?")


def test_module_reference_of_the_fakes_follows_that_registry() -> None:
    registry = fakes.registry()
    reference = module_reference(registry)
    assert list(_reference_entries(reference)) == [spec.signature() for spec in registry]
    assert "fake: scripted boxes" in reference


def test_a_plugin_module_appears_with_no_prompt_edits() -> None:
    registry: Registry = default_registry().copy()
    registry.register(Invert, source="tests")
    signature = "Invert(image: Image) -> Image"
    assert Invert.signature() == signature

    reference = module_reference(registry)
    entry = _reference_entries(reference)[signature]
    assert "Invert the colours of an image, like a photographic negative." in entry
    assert "image: the image whose colours to invert." in entry
    assert list(_reference_entries(reference))[-1] == signature

    for task in TASKS:
        prompts = get_task(task)
        messages = build_messages(prompts, registry, "Invert the picture")
        assert entry in messages[0]["content"]
    # the default registry itself is untouched
    assert signature not in module_reference(default_registry())
    assert signature not in build_messages(get_task("edit"), default_registry(), "x")[0]["content"]
    # and a program using it checks against the registry that has it
    check("IMAGE0=Invert(image=IMAGE)\nFINAL_RESULT=Result(var=IMAGE0)", ("IMAGE",), registry=registry)


# --------------------------------------------------------------------------- messages and prompts


@pytest.mark.parametrize("task", TASKS)
def test_build_messages_structure(task: str) -> None:
    prompts = get_task(task)
    registry = default_registry()
    text = "How many zebras are drinking water?"
    messages = build_messages(prompts, registry, text)

    assert all(set(m) == {"role", "content"} for m in messages)
    assert all(isinstance(m["content"], str) and m["content"] for m in messages)
    shown = min(DEFAULT_EXAMPLES, len(prompts.examples))
    assert len(messages) == 2 + 2 * shown
    system = messages[0]
    assert system["role"] == "system"
    assert prompts.instructions in system["content"]
    assert module_reference(registry) in system["content"]
    for rule in ("NAME=Module(arg=value, ...)", "FINAL_RESULT=Result(var=NAME)", "{NAME}", "program only"):
        assert rule in system["content"], rule
    for name in prompts.inputs:
        assert name in system["content"]

    roles = [m["role"] for m in messages[1:]]
    assert roles == ["user", "assistant"] * shown + ["user"]
    # each pair is one example of the pool, input and program together, none twice
    by_input = {f"{prompts.input_label}: {e.input}": e.program for e in prompts.examples}
    pairs = list(zip(messages[1:-1:2], messages[2:-1:2], strict=True))
    assert len({user["content"] for user, _ in pairs}) == shown
    for user, assistant in pairs:
        assert assistant["content"] == by_input[user["content"]]
    assert messages[-1] == {"role": "user", "content": f"{prompts.input_label}: {text}"}
    assert text in messages[-1]["content"]


def _diagnostics(program: str) -> str:
    with pytest.raises(ProgramCheckError) as info:
        check(program, ("IMAGE",), registry=default_registry())
    return str(info.value)


def test_repair_messages_appends_the_reply_and_the_diagnostics() -> None:
    prompts = get_task("gqa")
    messages = build_messages(prompts, default_registry(), "How many dogs are there?")
    before = [dict(m) for m in messages]
    reply = "BOX0=Lco(image=IMAGE, object='dog')\nANSWER0=Count(box=BOX0)\nFINAL_RESULT=Result(var=ANSWER0)"
    diagnostics = _diagnostics(reply)
    assert "Lco" in diagnostics

    repaired = repair_messages(messages, reply, diagnostics)
    assert messages == before  # not modified in place
    assert repaired[: len(messages)] == messages
    assert len(repaired) == len(messages) + 2
    assert repaired[-2] == {"role": "assistant", "content": reply}
    last = repaired[-1]
    assert last["role"] == "user"
    assert last["content"].startswith("The program has errors:\n")
    assert diagnostics in last["content"]
    assert last["content"].endswith("Write the whole corrected program, nothing else.")
    # roles still alternate after the system message, so it can be repaired again
    roles = [m["role"] for m in repair_messages(repaired, "ANSWER0=Count(box=BOX9)", "line 1: ...")[1:]]
    assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]


def test_repair_messages_never_sends_an_empty_assistant_turn() -> None:
    repaired = repair_messages([{"role": "user", "content": "Question: ?"}], "  ", "line 1, col 1: no program")
    assert repaired[-2]["role"] == "assistant" and repaired[-2]["content"].strip()


# --------------------------------------------------------------------------- user prompt files


USER_TOML = """\
task = "counting"
description = "counting things"
inputs = ["PHOTO"]
input_label = "Ask"
instructions = \"\"\"
Count things with Loc and Count.
\"\"\"

[[examples]]
input = "How many dogs?"
program = \"\"\"
    BOX0=Loc(image=PHOTO, object='dog')
    ANSWER0=Count(box=BOX0)
    FINAL_RESULT=Result(var=ANSWER0)
\"\"\"

[[examples]]
input = "  How many cats?  "
program = "BOX0=Loc(image=PHOTO, object='cat')\\nANSWER0=Count(box=BOX0)\\nFINAL_RESULT=Result(var=ANSWER0)\\n"
"""


def test_a_task_from_a_user_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(USER_TOML, encoding="utf-8")
    prompts = get_task(str(path))
    assert prompts == load_task(path)
    assert prompts.name == "counting"
    assert prompts.description == "counting things"
    assert prompts.inputs == ("PHOTO",)
    assert prompts.input_label == "Ask"
    assert prompts.instructions == "Count things with Loc and Count."
    assert [e.input for e in prompts.examples] == ["How many dogs?", "How many cats?"]
    assert prompts.examples[0].program == (
        "BOX0=Loc(image=PHOTO, object='dog')\nANSWER0=Count(box=BOX0)\nFINAL_RESULT=Result(var=ANSWER0)"
    )
    for example in prompts.examples:
        check(example.program, prompts.inputs, registry=default_registry())
    messages = build_messages(prompts, default_registry(), "How many birds?")
    assert messages[-1]["content"] == "Ask: How many birds?"
    assert "PHOTO" in messages[0]["content"]


def test_a_user_file_needs_only_inputs_and_examples(tmp_path: Path) -> None:
    path = tmp_path / "minimal.toml"
    path.write_text(
        textwrap.dedent(
            """\
            inputs = ["IMAGE"]
            [[examples]]
            input = "What is it?"
            program = "ANSWER0=Vqa(image=IMAGE, question='What is it?')\\nFINAL_RESULT=Result(var=ANSWER0)"
            """
        ),
        encoding="utf-8",
    )
    prompts = get_task(str(path))
    assert prompts.name == "minimal"
    assert prompts.input_label == "Question"
    assert (prompts.description, prompts.instructions) == ("", "")
    assert build_messages(prompts, default_registry(), "Who?")[-1]["content"] == "Question: Who?"
    # a task of its own file: its verb is its name, it answers with text
    assert (prompts.command, prompts.label, prompts.answer, prompts.first_words) == ("minimal", "minimal", "text", ())


GOOD_EXAMPLE = "[[examples]]\ninput = 'q'\nprogram = 'FINAL_RESULT=Result(var=IMAGE)'\n"


@pytest.mark.parametrize(
    ("content", "key"),
    [
        pytest.param("inputs = ['IMAGE'\n" + GOOD_EXAMPLE, "not valid TOML", id="bad-toml"),
        pytest.param("inputs = ['IMAGE']\n", "'examples'", id="no-examples"),
        pytest.param("inputs = ['IMAGE']\nexamples = []\n", "'examples'", id="empty-examples"),
        pytest.param(GOOD_EXAMPLE, "'inputs'", id="no-inputs"),
        pytest.param("inputs = 3\n" + GOOD_EXAMPLE, "'inputs'", id="inputs-not-a-list"),
        pytest.param("inputs = ['not a name']\n" + GOOD_EXAMPLE, "'inputs'", id="inputs-bad-name"),
        pytest.param("inputs = ['IMAGE']\nexampels = 1\n" + GOOD_EXAMPLE, "'exampels'", id="unknown-key"),
        pytest.param("inputs = ['IMAGE']\ninstructions = 5\n" + GOOD_EXAMPLE, "'instructions'", id="instructions-int"),
        pytest.param(
            "inputs = ['IMAGE']\ndescription = \"a\\nb\"\n" + GOOD_EXAMPLE, "'description'", id="desc-2-lines"
        ),
        pytest.param("inputs = ['IMAGE']\n[[examples]]\ninput = 'q'\n", "examples[1]: key 'program'", id="no-program"),
        pytest.param(
            "inputs = ['IMAGE']\n" + GOOD_EXAMPLE + "[[examples]]\ninput = 'q2'\nprogram = 7\n",
            "examples[2]: key 'program' must be a string",
            id="program-int",
        ),
        pytest.param(
            "inputs = ['IMAGE']\n[[examples]]\ninput = 'q'\nprogram = 'X=1'\nanswer = 'a'\n",
            "'answer'",
            id="example-unknown-key",
        ),
        pytest.param("inputs = ['IMAGE']\n[[examples]]\ninput = ''\nprogram = 'X'\n", "key 'input'", id="empty-input"),
        pytest.param("inputs = ['IMAGE']\nverb = 'Ask Me'\n" + GOOD_EXAMPLE, "key 'verb'", id="verb-not-a-command"),
        pytest.param(
            "inputs = ['IMAGE']\nanswer = 'number'\n" + GOOD_EXAMPLE, "'text', 'yes/no', 'image'", id="answer"
        ),
        pytest.param("inputs = ['IMAGE']\nweb_label = 3\n" + GOOD_EXAMPLE, "'web_label'", id="web-label-int"),
        pytest.param("inputs = ['IMAGE']\nfirst_words = 'hide'\n" + GOOD_EXAMPLE, "'first_words'", id="words-str"),
        pytest.param("inputs = ['IMAGE']\nfirst_words = ['a b']\n" + GOOD_EXAMPLE, "'first_words'", id="words-2"),
    ],
)
def test_a_bad_user_file_raises_config_error_naming_file_and_key(tmp_path: Path, content: str, key: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        get_task(str(path))
    message = str(info.value)
    assert str(path) in message
    assert key in message


def test_a_missing_user_file_raises_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"absent\.toml"):
        get_task(str(path))
    with pytest.raises(ConfigError, match=r"absent\.toml"):
        load_task(path)


def test_an_unknown_task_raises_config_error_naming_it_and_the_tasks() -> None:
    with pytest.raises(ConfigError) as info:
        get_task("vqa2")
    message = str(info.value)
    assert "'vqa2'" in message
    for task in TASKS:
        assert task in message


# --------------------------------------------------------------------------- tasks from $VISPROG_TASKS


def _task_file(folder: Path, name: str, **keys: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    extra = "".join(f"{k} = {v!r}\n" for k, v in keys.items())
    path = folder / f"{name}.toml"
    path.write_text(f"inputs = ['IMAGE']\n{extra}{GOOD_EXAMPLE}", encoding="utf-8")
    return path


def test_tasks_are_the_packaged_files_plus_the_folders_of_visprog_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _task_file(one, "count", verb="count", answer="text", web_label="Count things")
    _task_file(two, "gqa", description="my own questions")  # replaces the packaged gqa
    monkeypatch.setenv("VISPROG_TASKS", f"{one}{os.pathsep}{two}")
    found = tasks()
    assert list(found)[: len(TASKS)] == list(TASKS)
    assert found["count"].label == "Count things" and found["count"].source == str(one / "count.toml")
    assert get_task("count") is found["count"]
    assert found["gqa"].description == "my own questions" and found["gqa"].command == "gqa"
    monkeypatch.delenv("VISPROG_TASKS")
    assert list(tasks()) == list(TASKS) and get_task("gqa").command == "ask"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        pytest.param({"a/x": {"task": "same"}, "b/y": {"task": "same"}}, "task 'same' is already defined", id="name"),
        pytest.param({"a/x": {"verb": "ask"}}, "verb 'ask' of task 'x' is already the verb of task 'gqa'", id="verb"),
        pytest.param({"a/x": {"answer": "maybe"}}, "key 'answer'", id="bad-file"),
    ],
)
def test_clashing_or_broken_task_files_say_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, dict[str, str]], message: str
) -> None:
    for where, keys in files.items():
        folder, name = where.split("/")
        _task_file(tmp_path / folder, name, **keys)
    monkeypatch.setenv("VISPROG_TASKS", os.pathsep.join(str(tmp_path / f) for f in ("a", "b")))
    (tmp_path / "b").mkdir(exist_ok=True)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        tasks()
    assert str(tmp_path / "a" / "x.toml") in str(info.value)


def test_a_folder_in_visprog_tasks_that_is_not_there_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISPROG_TASKS", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"VISPROG_TASKS: .*nowhere is not a folder"):
        tasks()


@pytest.mark.parametrize(
    ("text", "n_images", "task"),
    [
        ("Hide the face", 1, "edit"),
        ("tag the dogs", 1, "tag"),
        ("How many?", 1, "gqa"),
        ("Hide the face", 2, "nlvr"),
        ("", 0, "gqa"),
        ("", 5, "nlvr"),
    ],
)
def test_guess_task_reads_the_first_words_and_the_inputs(text: str, n_images: int, task: str) -> None:
    assert guess_task(text, n_images) == task


def test_input_names_are_every_tasks_inputs() -> None:
    assert set(input_names()) == {"IMAGE", "LEFT", "RIGHT"}
