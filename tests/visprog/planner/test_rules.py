"""The language's rules in the system prompt say what Eval accepts, and what they show works."""

from __future__ import annotations

import re

import pytest

from visprog.language.expr import evaluate, parse_template
from visprog.language.expr_syntax import FUNCTIONS, METHODS
from visprog.planner.prompts import system_prompt
from visprog.planner.tasks import get_task, tasks
from visprog.running.plugins import default_registry


def _eval_rule(task: str = "gqa") -> str:
    rules = system_prompt(get_task(task), default_registry()).split("\n\n")[0]
    (line,) = [line for line in rules.splitlines() if line.startswith('- Eval(expr="...")')]
    return line


@pytest.mark.parametrize("task", list(tasks()))
def test_every_prompt_describes_eval(task: str) -> None:
    rule = _eval_rule(task)
    for construct in (
        "{NAME}",
        "lists ['a', 'b']",
        "+ - * / // % **",
        "comparisons (== != < <= > >=)",
        "in and not in a list",
        "and, or, not, xor",
        "'a' if condition else 'b'",
        "Answers 'yes' / 'no' read as True / False",
    ):
        assert construct in rule, construct


def test_the_functions_and_methods_listed_are_evals_own() -> None:
    rule = _eval_rule()
    functions = re.search(r"the functions ([a-z ]+) \(", rule)
    methods = re.search(r"the text methods ([a-z ]+) \(", rule)
    assert functions is not None and methods is not None, rule
    assert functions.group(1).split() == list(FUNCTIONS)
    assert methods.group(1).split() == list(METHODS)
    for name in ("len", "min", "max", "abs", "round", "int", "str"):
        assert name in functions.group(1).split()
    for name in ("lower", "upper", "strip"):
        assert name in methods.group(1).split()
    # each is accepted by Eval's grammar as written in a program
    for name, (least, _) in FUNCTIONS.items():
        parse_template(f"{name}({', '.join(['{A}'] * least)})")
    for name, (least, _) in METHODS.items():
        arguments = ", ".join(["'x'"] * least)
        parse_template(f"{{A}}.{name}({arguments})")


def test_the_rules_examples_evaluate() -> None:
    rule = _eval_rule()
    values = {"ANSWER0": "Red", "ANSWER1": "3"}
    shown = {
        "'yes' if {ANSWER0} > 0 else 'no'": None,  # shown with a count
        "{ANSWER0} in ['red', 'pink']": False,  # an answer as written: 'Red'
        "max({ANSWER0}, {ANSWER1})": None,
        "{ANSWER0}.lower()": "red",
    }
    for expression, expected in shown.items():
        assert expression in rule, expression
        if expected is not None:
            assert evaluate(expression, values) == expected
    assert evaluate("'yes' if {ANSWER0} > 0 else 'no'", {"ANSWER0": 2}) == "yes"
    assert evaluate("max({ANSWER0}, {ANSWER1})", {"ANSWER0": "2", "ANSWER1": 3}) == 3
    assert evaluate("{ANSWER0}.lower() in ['red', 'pink']", values) is True
