"""Answer scoring: whether an answer matches the expected one.

Two answers are the same when :func:`visprog.language.values.answer_key` says so, the rule the
planner's vote uses too: a VQA-style normal form (:func:`visprog.language.values.normalize_answer`:
lower case, no punctuation or articles, number words as digits, numbers by value, ``True`` and
``'yes'`` alike).
"""

from __future__ import annotations

from typing import Any

from visprog.language.values import same_answer

__all__ = ["is_correct"]


def is_correct(answer: Any, expected: Any) -> bool:
    """Whether ``answer`` is the same answer as ``expected`` (:func:`visprog.language.values.same_answer`).

    An ``expected`` list holds alternatives, VQA-style: the answer is correct when it matches any
    one of them (``["gray", "grey"]``); it is not compared with the list as a whole.
    """
    if isinstance(expected, list):
        return any(is_correct(answer, e) for e in expected)
    return same_answer(answer, expected)
