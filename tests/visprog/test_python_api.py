"""The Python API as an editor shows it, and modules that return numpy arrays as images."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from PIL import Image as PILImage

import visprog
from tests import fakes
from visprog.language.signatures import module
from visprog.language.values import Image, Type, coerce
from visprog.running.interpreter import Interpreter

OPTIONS = ("samples", "temperature", "model", "base_url", "local", "constrain", "examples", "see_image", "cache")


@pytest.mark.parametrize("name", ["ask", "verify", "edit", "tag"])
def test_the_task_functions_list_their_options(name: str) -> None:
    params = inspect.signature(getattr(visprog, name)).parameters
    for option in OPTIONS:
        assert option in params, f"{name}() does not list {option}"
        assert params[option].kind is inspect.Parameter.KEYWORD_ONLY


def test_unset_options_are_not_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import visprog.solving as solve_module

    seen: dict[str, object] = {}

    def fake(verb: str, images: list[object], text: str, **options: object) -> str:
        seen.update(verb=verb, options=options)
        return "done"

    monkeypatch.setattr(solve_module, "solve_by_verb", fake)
    assert solve_module.ask("img", "How many?", samples=3, max_tokens=50) == "done"
    assert seen == {"verb": "ask", "options": {"samples": 3, "max_tokens": 50}}


@pytest.mark.parametrize(
    ("array", "mode"),
    [
        (np.zeros((4, 6, 3), dtype=np.uint8), "RGB"),
        (np.zeros((4, 6, 4), dtype=np.uint8), "RGBA"),
        (np.zeros((4, 6), dtype=np.uint8), "L"),
        (np.ones((4, 6, 1), dtype=np.uint8), "L"),
        (np.ones((4, 6), dtype=bool), "L"),
        (np.full((4, 6, 3), 0.5), "RGB"),
    ],
)
def test_a_numpy_array_is_an_image(array: np.ndarray, mode: str) -> None:
    image = coerce(array, Type.IMAGE)
    assert isinstance(image, PILImage.Image) and image.size == (6, 4) and image.mode == mode


def test_arrays_that_are_no_image_are_refused_clearly() -> None:
    with pytest.raises(TypeError, match=r"an array of shape \(2, 3, 5\)"):
        coerce(np.zeros((2, 3, 5), dtype=np.uint8), Type.IMAGE)
    with pytest.raises(TypeError, match="an array of int64"):
        coerce(np.zeros((2, 3), dtype=np.int64), Type.IMAGE)


def test_a_module_may_return_an_array_where_an_image_is_expected() -> None:
    @module
    def Invert(image: Image) -> Image:
        """Invert the image, as an array.

        Args:
            image: the image.
        """
        return 255 - np.asarray(image)  # type: ignore[return-value]

    registry = fakes.registry()
    registry.register(Invert)
    photo = PILImage.new("RGB", (5, 3), (10, 20, 30))
    trace = Interpreter(registry, known_inputs=["IMAGE"]).run(
        "IMAGE0=Invert(image=IMAGE)\nFINAL_RESULT=Result(var=IMAGE0)", {"IMAGE": photo}
    )
    assert isinstance(trace.result, PILImage.Image)
    assert trace.result.getpixel((0, 0)) == (245, 235, 225)


def test_visprog_solve_stays_the_function_after_its_module_is_imported() -> None:
    """The module behind the API (visprog.solving) never hides the function visprog.solve, whatever ran first."""
    import inspect

    import visprog
    import visprog.solving

    visprog.ask  # noqa: B018 - loads the API as a user's first call would
    assert visprog.solve is visprog.solving.solve
    assert "planner" in inspect.signature(visprog.solve).parameters
