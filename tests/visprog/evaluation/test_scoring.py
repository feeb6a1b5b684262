"""Answer scoring: the normal form of answers, and scoring and voting agreeing on what equal answers are."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image as PILImage

from visprog.evaluation.scoring import is_correct
from visprog.language.values import answer_key, normalize_answer
from visprog.planner.core import vote


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Yes", "yes"),
        ("The red car.", "red car"),
        ("a dog", "dog"),
        ("an apple!", "apple"),
        ("Two", "2"),
        ("two dogs", "2 dogs"),
        (2, "2"),
        (2.0, "2"),
        (2.5, "2.5"),
        ("2.5", "2.5"),
        ("1,000", "1000"),
        ("2.50", "2.5"),
        ("1.0", "1"),
        (1.0, "1"),
        ("1,000.50", "1000.5"),
        ("007", "7"),
        ("-3 degrees", "-3 degrees"),
        ("The 2.0 cars.", "2 cars"),
        ("y", "y"),
        ("N", "n"),
        (True, "yes"),
        (False, "no"),
        ("True", "yes"),
        ("false", "no"),
        ("  Left-Side ", "left side"),
        ("there", "there"),
        (None, ""),
    ],
)
def test_normalize_answer(value: Any, expected: str) -> None:
    assert normalize_answer(value) == expected


def test_is_correct() -> None:
    assert is_correct(True, "True") and is_correct("no", False) and is_correct("2", "two")
    assert is_correct("grey", ["gray", "grey"])
    assert not is_correct("yes", "False") and not is_correct("cat", "cats")


def test_numbers_compare_by_value_and_single_letters_are_not_yes_or_no() -> None:
    assert is_correct("2.50", 2.5) and is_correct(2.5, "2.50") and is_correct("1.0", 1) and is_correct(1, "1.0")
    assert is_correct("1,000", 1000) and is_correct(1000.0, "1,000") and is_correct("one", "1.0")
    assert not is_correct("2.5", 2) and not is_correct("1.01", 1)
    assert not is_correct("y", "yes") and not is_correct("n", "no") and not is_correct("y", True)
    # a list of expected answers: alternatives, any one of them counts (not the list as a whole)
    assert is_correct("two", ["2", "pair"]) and not is_correct("2 pair", ["2", "pair"])


# -- scoring and voting agree ------------------------------------------------------------


def _image(color: str) -> PILImage.Image:
    return PILImage.new("RGB", (4, 4), color)


_RED = _image("red")

#: (answer, other answer, whether they are the same answer)
_PAIRS: list[tuple[Any, Any, bool]] = [
    ("yes", True, True),
    ("Yes.", "true", True),
    ("no", False, True),
    ("False", False, True),
    ("yes", False, False),
    ("y", True, False),
    ("1", True, False),  # a number is not a boolean, though True == 1 in Python
    (1, True, False),
    (0, False, False),
    ("2", 2, True),
    ("two", 2.0, True),
    ("2.50", 2.5, True),
    ("1,000", 1000, True),
    ("2.5", 2, False),
    ("The red car.", "red car", True),
    ("Red Car", "car", False),
    ("cat", "cats", False),
    (None, "", True),
    (("a", "b"), ("A", "b"), True),  # (an expected *list* holds alternatives: see test_is_correct)
    (_RED, _RED, True),  # an image is the same answer as itself only
    (_RED, _image("red"), False),
    (_RED, "red", False),
]


@pytest.mark.parametrize(("a", "b", "same"), _PAIRS, ids=[f"{a!r}-{b!r}"[:40] for a, b, _ in _PAIRS])
def test_scoring_and_voting_agree_on_what_equal_answers_are(a: Any, b: Any, same: bool) -> None:
    assert is_correct(a, b) is same and is_correct(b, a) is same
    winner, agreement = vote([a, b])
    assert winner is a and agreement == (1.0 if same else 0.5)
    assert (answer_key(a) == answer_key(b)) is same
