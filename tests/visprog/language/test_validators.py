"""Literal arguments checked by a parameter's validator, and the spellings a module is suggested for."""

from __future__ import annotations

import pytest

from tests import fakes
from tests.fakes import check
from visprog.errors import ProgramCheckError, RegistrationError
from visprog.language.signatures import Registry, at_least, module, not_empty
from visprog.language.values import Image


def _even(value: int) -> str | None:
    return None if value % 2 == 0 else f"must be even, got {value}"


def _broken(value: str) -> str | None:
    raise RuntimeError("no table")


@module(validate={"n": _even, "words": not_empty("a word")})
def Pick(image: Image, words: list[str], n: int = 2, label: str | None = None) -> str:
    """Pick a word.

    Args:
        image: the image.
        words: the words to pick from.
        n: an even number.
        label: a label.
    """
    return words[0]


@module(validate={"label": _broken})
def Broken(label: str) -> str:
    """A module whose validator fails.

    Args:
        label: anything.
    """
    return label


@module(suggest_for=["CROP_NEAR_TO", "NEARBY"])
def Near(image: Image) -> Image:
    """The image.

    Args:
        image: the image.
    """
    return image


def _registry() -> Registry:
    reg = Registry()
    reg.register_all([Pick, Broken, Near])
    return reg


def _messages(source: str) -> list[str]:
    with pytest.raises(ProgramCheckError) as info:
        check(source, ["IMAGE"], registry=_registry())
    return [f"{d.line}:{d.column} {d.message}" for d in info.value.diagnostics]


def test_a_literal_argument_is_validated_at_its_column() -> None:
    assert _messages("X=Pick(image=IMAGE, words=['a'], n=3)") == ["1:36 argument 'n' of Pick: must be even, got 3"]
    assert _messages("X=Pick(IMAGE, [], 3)") == [
        "1:15 argument 'words' of Pick: needs a word, got []",
        "1:19 argument 'n' of Pick: must be even, got 3",
    ]
    assert _messages("X=Pick(image=IMAGE, words=' , ')") == ["1:27 argument 'words' of Pick: needs a word, got ' , '"]


def test_good_literals_variables_and_none_are_not_refused() -> None:
    check("X=Pick(image=IMAGE, words=['a', 'b'], n=4)", ["IMAGE"], registry=_registry())
    # a variable's value is only known when the program runs
    check("N=3\nW=Pick(image=IMAGE, words=['a'], n=N)", ["IMAGE"], registry=_registry())
    check("X=Pick(image=IMAGE, words=['a'], label=None)", ["IMAGE"], registry=_registry())


def test_a_value_of_the_wrong_type_gets_the_type_error_only() -> None:
    assert _messages("X=Pick(image=IMAGE, words=['a'], n='three')") == [
        "1:36 argument 'n' of Pick expects int, got str 'three'"
    ]


def test_a_validator_that_raises_is_a_diagnostic() -> None:
    assert _messages("X=Broken(label='x')") == [
        "1:16 argument 'label' of Broken: its validator failed on 'x': RuntimeError: no table"
    ]


def test_validators_are_declared_on_parameters() -> None:
    assert Pick.param("n") is not None and Pick.param("n").validator is _even  # type: ignore[union-attr]
    assert Pick.param("image").validator is None  # type: ignore[union-attr]
    assert at_least(1)(0) == "must be at least 1, got 0" and at_least(1)(1) is None

    def f(x: int) -> int:
        """F.

        Args:
            x: a number.
        """
        return x

    with pytest.raises(RegistrationError, match="validate= names 'y', which is not one of its parameters"):
        module(validate={"y": _even})(f)
    with pytest.raises(RegistrationError, match="the validator of 'x' must be a function"):
        module(validate={"x": 3})(f)  # type: ignore[dict-item]
    with pytest.raises(RegistrationError, match="validate= takes a dict"):
        module(validate=[_even])(f)  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match="suggest_for= takes a list of names"):
        module(suggest_for="CROP")(f)
    with pytest.raises(RegistrationError, match="suggest_for= entry 'no way' is not a name"):
        module(suggest_for=["no way"])(f)


def test_a_module_is_suggested_for_its_declared_spellings_but_never_resolved() -> None:
    reg = _registry()
    assert Near.suggest_for == ("CROP_NEAR_TO", "NEARBY")
    assert reg.get("NEARBY") is None and "CROP_NEAR_TO" not in reg
    assert reg.suggest("nearby") == "Near" and reg.suggest("NEAR_BY") == "Near" and reg.suggest("NEARBYY") == "Near"
    assert reg.copy().suggest("NEARBY") == "Near"
    assert _messages("X=NEARBY(image=IMAGE)") == ["1:3 unknown module 'NEARBY' (did you mean 'Near'?)"]
    with pytest.raises(KeyError, match=r"did you mean 'Near'\?"):
        reg["NEARBY"]


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("CROP_TOPOF", "CropAbove"),
        ("CROP_TOP", "CropAbove"),
        ("CROP_BOTTOM", "CropBelow"),
        ("CROP_NEXTTO", "Crop"),
        ("CROP_NEAR", "Crop"),
        ("FACE_DETECTION", "FaceDet"),
    ],
)
def test_visprog_vocabulary_is_suggested(written: str, meant: str) -> None:
    reg = fakes.registry()
    assert reg.get(written) is None
    assert reg.suggest(written) == meant


def test_face_det_spelt_visprog_style_resolves() -> None:
    assert fakes.registry().get("FACE_DET") is not None  # underscores and case are ignored in names
