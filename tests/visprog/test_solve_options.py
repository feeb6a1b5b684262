"""solve() names its options (help() and editors show them) and hands them to create_planner."""

from __future__ import annotations

import inspect

import pytest
from PIL import Image as PILImage

from tests import fakes
from visprog.errors import ConfigError
from visprog.llm.clients import LOCAL_OPTIONS, SERVER_OPTIONS
from visprog.planner.scripted import scripted_planner
from visprog.solving import PLANNER_OPTIONS, create_planner, solve

IMAGES = {"IMAGE": PILImage.new("RGB", (32, 24))}


def _keywords(fn: object) -> dict[str, inspect.Parameter]:
    return {p.name: p for p in inspect.signature(fn).parameters.values()}  # type: ignore[arg-type]


def test_solve_lists_every_option_and_takes_no_other_keywords() -> None:
    params = _keywords(solve)
    assert not [p for p in params.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    made_by = _keywords(create_planner)
    named = {n for n, p in made_by.items() if p.kind is inspect.Parameter.KEYWORD_ONLY} - {"registry"}
    assert [p.kind for p in made_by.values()][-1] is inspect.Parameter.VAR_KEYWORD  # its **llm_options: the client's
    client = (SERVER_OPTIONS | LOCAL_OPTIONS) - {"temperature", "max_new_tokens"}  # solve's own; max_tokens' alias
    assert set(PLANNER_OPTIONS) == named | client
    for name in PLANNER_OPTIONS:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default is None, name
    assert "registry" in params and "temperature" in params  # solve's own, also used for the planner
    with pytest.raises(TypeError, match="unexpected keyword argument 'modle'"):
        solve("gqa", "How many?", IMAGES, modle="x")  # type: ignore[call-arg]


def test_options_reach_create_planner() -> None:
    with pytest.raises(ConfigError, match="examples must be 0"):
        solve("gqa", "How many?", IMAGES, base_url="http://127.0.0.1:9/v1", model="tiny", examples=-2)
    with pytest.raises(ConfigError, match="grammar_format"):
        solve("gqa", "How many?", IMAGES, base_url="http://127.0.0.1:9/v1", grammar_format="no-such-format")


def test_planner_options_with_a_planner_are_an_error() -> None:
    planner = scripted_planner(["ANSWER0=Count(box=[])\nFINAL_RESULT=Result(var=ANSWER0)"], registry=fakes.registry())
    with pytest.raises(ConfigError, match=r"^solve: model, see_image choose how a planner is made .* planner="):
        solve("gqa", "How many?", IMAGES, planner=planner, model="tiny", see_image=True)
