"""The planner's prompts: packaged prompt sets, the module reference rendered from the registry, messages.

Every in-context example of every packaged task is a test of its own: it must
parse and type-check against the default registry with the task's inputs, and
run on the fake modules (tests/fakes.py) without error, giving the kind of
result its task promises.
"""

from __future__ import annotations

import dataclasses
import functools
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
from visprog.errors import ConfigError, ProgramCheckError
from visprog.language.checker import check
from visprog.language.parser import parse
from visprog.language.signatures import Registry
from visprog.language.values import Image
from visprog.planner.prompts import (
    TASKS,
    Example,
    PromptSet,
    build_completion_prompt,
    build_messages,
    load_prompts,
    module_reference,
    repair_messages,
    repair_prompt,
)
from visprog.running.interpreter import Interpreter
from visprog.running.plugins import default_registry
from visprog.running.runtime import Runtime

#: FaceDet's cascade backend ships with scikit-image: no download.
RUNTIME = Runtime(modules={"FaceDet": {"backend": "cascade"}})

EXPECTED_INPUTS = {"gqa": ("IMAGE",), "nlvr": ("LEFT", "RIGHT"), "edit": ("IMAGE",), "tag": ("IMAGE",)}
EXPECTED_LABELS = {"gqa": "Question", "nlvr": "Statement", "edit": "Instruction", "tag": "Instruction"}

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
        for i, example in enumerate(load_prompts(task).examples, start=1):
            params.append(pytest.param(task, example, id=f"{task}-{i:02d}-{_slug(example.input)}"))
    return params


def _runs() -> list[Any]:
    params = []
    for task in TASKS:
        prompts = load_prompts(task)
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
    prompts = load_prompts(task)
    assert isinstance(prompts, PromptSet)
    assert prompts.task == task
    assert prompts.inputs == EXPECTED_INPUTS[task]
    assert prompts.input_label == EXPECTED_LABELS[task]
    assert prompts.description and "\n" not in prompts.description
    assert len(prompts.instructions) > 200
    assert 8 <= len(prompts.examples) <= 14
    assert all(isinstance(e, Example) for e in prompts.examples)
    inputs = [e.input for e in prompts.examples]
    assert len(set(inputs)) == len(inputs), "two examples have the same input"
    for e in prompts.examples:
        assert e.program == e.program.strip()
        assert e.input == e.input.strip() and "\n" not in e.input
    # loading is deterministic and the result immutable
    assert load_prompts(task) == prompts
    assert load_prompts(task.upper()) == prompts
    with pytest.raises(dataclasses.FrozenInstanceError):
        prompts.task = "other"  # type: ignore[misc]


def test_packaged_files_are_package_data() -> None:
    files = {f.name for f in resources.files("visprog.prompts").iterdir() if f.name.endswith(".toml")}
    assert files == {f"{task}.toml" for task in TASKS}


def test_examples_use_the_whole_language_of_their_tasks() -> None:
    def modules(task: str) -> set[str]:
        return {m.group(2) for e in load_prompts(task).examples for m in map(STEP.match, e.program.splitlines()) if m}

    crops = {"Crop", "CropLeftOf", "CropRightOf", "CropAbove", "CropBelow"}
    assert crops | {"Loc", "Count", "Vqa", "Eval", "Result"} <= modules("gqa")
    assert {"Vqa", "Loc", "Count", "Eval", "Result", "CropLeftOf"} <= modules("nlvr")
    assert {"Seg", "Select", "FaceDet", "Loc", "Replace", "ColorPop", "BgBlur", "Emoji", "Crop"} <= modules("edit")
    assert {"FaceDet", "Loc", "List", "Classify", "Tag"} <= modules("tag")
    everything = set().union(*(modules(t) for t in TASKS))
    assert crops <= everything
    nlvr_evals = " ".join(e.program for e in load_prompts("nlvr").examples)
    for word in (" and ", " or ", " xor ", "not ", "==", ">"):
        assert word in nlvr_evals, word


@pytest.mark.parametrize(("task", "example"), _examples())
def test_example_checks_against_the_default_registry(task: str, example: Example) -> None:
    prompts = load_prompts(task)
    registry = default_registry()
    checked = check(example.program, registry, prompts.inputs)
    assert set(checked.used_inputs) <= set(prompts.inputs)
    assert checked.steps[checked.result].step.is_result
    lines = [line for line in example.program.splitlines() if line.strip()]
    assert len(parse(example.program).steps) == len(lines)
    assert FINAL.match(lines[-1]), lines[-1]
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
    prompts = load_prompts("gqa")
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
        prompts = load_prompts(task)
        messages = build_messages(prompts, registry, "Invert the picture")
        assert entry in messages[0]["content"]
        assert entry in build_completion_prompt(prompts, registry, "Invert the picture")
    # the default registry itself is untouched
    assert signature not in module_reference(default_registry())
    assert signature not in build_messages(load_prompts("edit"), default_registry(), "x")[0]["content"]
    # and a program using it checks against the registry that has it
    check("IMAGE0=Invert(image=IMAGE)\nFINAL_RESULT=Result(var=IMAGE0)", registry, ("IMAGE",))


# --------------------------------------------------------------------------- messages and prompts


@pytest.mark.parametrize("task", TASKS)
def test_build_messages_structure(task: str) -> None:
    prompts = load_prompts(task)
    registry = default_registry()
    text = "How many zebras are drinking water?"
    messages = build_messages(prompts, registry, text)

    assert all(set(m) == {"role", "content"} for m in messages)
    assert all(isinstance(m["content"], str) and m["content"] for m in messages)
    assert len(messages) == 2 + 2 * len(prompts.examples)
    system = messages[0]
    assert system["role"] == "system"
    assert prompts.instructions in system["content"]
    assert module_reference(registry) in system["content"]
    for rule in ("NAME=Module(arg=value, ...)", "FINAL_RESULT=Result(var=NAME)", "{NAME}", "program only"):
        assert rule in system["content"], rule
    for name in prompts.inputs:
        assert name in system["content"]

    roles = [m["role"] for m in messages[1:]]
    assert roles == ["user", "assistant"] * len(prompts.examples) + ["user"]
    for example, user, assistant in zip(prompts.examples, messages[1::2], messages[2::2], strict=False):
        assert user["content"] == f"{prompts.input_label}: {example.input}"
        assert assistant["content"] == example.program
    assert messages[-1] == {"role": "user", "content": f"{prompts.input_label}: {text}"}
    assert text in messages[-1]["content"]


@pytest.mark.parametrize("task", TASKS)
def test_build_completion_prompt(task: str) -> None:
    prompts = load_prompts(task)
    registry = default_registry()
    text = "Is the zebra drinking water?"
    prompt = build_completion_prompt(prompts, registry, text)
    assert prompt.endswith(f"{prompts.input_label}: {text}\nProgram:\n")
    assert prompt.rstrip().endswith("Program:")
    assert prompt.startswith(build_messages(prompts, registry, text)[0]["content"])
    assert module_reference(registry) in prompt
    position = 0
    for example in prompts.examples:
        shot = f"{prompts.input_label}: {example.input}\nProgram:\n{example.program}\n\n"
        found = prompt.find(shot, position)
        assert found >= position, example.input
        position = found + len(shot)
    assert prompt == build_completion_prompt(prompts, registry, text)


def _diagnostics(program: str) -> str:
    with pytest.raises(ProgramCheckError) as info:
        check(program, default_registry(), ("IMAGE",))
    return str(info.value)


def test_repair_messages_appends_the_reply_and_the_diagnostics() -> None:
    prompts = load_prompts("gqa")
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


def test_repair_prompt() -> None:
    prompts = load_prompts("edit")
    prompt = build_completion_prompt(prompts, default_registry(), "Hide the face")
    reply = "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0)\nFINAL_RESULT=Result(var=IMAGE0)"
    diagnostics = _diagnostics(reply)
    assert "emoji" in diagnostics
    repaired = repair_prompt(prompt, reply, diagnostics)
    assert repaired.startswith(prompt + reply)
    assert f"The program has errors:\n{diagnostics}\nWrite the whole corrected program, nothing else." in repaired
    assert repaired.endswith("Program:\n")


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


def test_load_prompts_from_a_user_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(USER_TOML, encoding="utf-8")
    prompts = load_prompts(str(path))
    assert prompts == load_prompts(path)
    assert prompts.task == "counting"
    assert prompts.description == "counting things"
    assert prompts.inputs == ("PHOTO",)
    assert prompts.input_label == "Ask"
    assert prompts.instructions == "Count things with Loc and Count."
    assert [e.input for e in prompts.examples] == ["How many dogs?", "How many cats?"]
    assert prompts.examples[0].program == (
        "BOX0=Loc(image=PHOTO, object='dog')\nANSWER0=Count(box=BOX0)\nFINAL_RESULT=Result(var=ANSWER0)"
    )
    for example in prompts.examples:
        check(example.program, default_registry(), prompts.inputs)
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
    prompts = load_prompts(str(path))
    assert prompts.task == "minimal"
    assert prompts.input_label == "Question"
    assert (prompts.description, prompts.instructions) == ("", "")
    assert build_completion_prompt(prompts, default_registry(), "Who?").endswith("Question: Who?\nProgram:\n")


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
    ],
)
def test_a_bad_user_file_raises_config_error_naming_file_and_key(tmp_path: Path, content: str, key: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_prompts(str(path))
    message = str(info.value)
    assert str(path) in message
    assert key in message


def test_a_missing_user_file_raises_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"absent\.toml"):
        load_prompts(str(path))
    with pytest.raises(ConfigError, match=r"absent\.toml"):
        load_prompts(path)


def test_an_unknown_task_raises_config_error_naming_it_and_the_tasks() -> None:
    with pytest.raises(ConfigError) as info:
        load_prompts("vqa2")
    message = str(info.value)
    assert "'vqa2'" in message
    for task in TASKS:
        assert task in message
