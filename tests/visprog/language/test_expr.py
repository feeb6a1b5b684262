"""The Eval expression language: parsing, binding, coercion, errors and safety."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import visprog.language.expr as expr_module
import visprog.language.expr_syntax as expr_syntax_module
from visprog.errors import EvalError
from visprog.language.expr import BoundExpression, Expression, evaluate, parse_template
from visprog.language.values import Template

# --------------------------------------------------------------------------- VisProg templates


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("2", "yes"), (3, "yes"), ("two", "yes"), ("0", "no"), (0, "no"), ("zero", "no"), (-1, "no")],
)
def test_yes_if_positive(answer: Any, expected: str) -> None:
    assert evaluate("'yes' if {ANSWER0} > 0 else 'no'", {"ANSWER0": answer}) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("yes", "no", True),
        ("no", "yes", True),
        ("yes", "yes", False),
        ("no", "no", False),
        ("Yes.", "NO", True),
        (True, "no", True),
        ("true", False, True),
    ],
)
def test_xor(a: Any, b: Any, expected: bool) -> None:
    assert evaluate("{ANSWER0} xor {ANSWER1}", {"ANSWER0": a, "ANSWER1": b}) is expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"ANSWER0": "2", "ANSWER1": "4", "ANSWER2": "1", "ANSWER3": "1"}, True),
        ({"ANSWER0": "two", "ANSWER1": "four", "ANSWER2": "one", "ANSWER3": 1}, True),
        ({"ANSWER0": 3, "ANSWER1": 3, "ANSWER2": 2, "ANSWER3": 0}, True),
        ({"ANSWER0": "3", "ANSWER1": "2", "ANSWER2": "1", "ANSWER3": "1"}, False),
        ({"ANSWER0": 4, "ANSWER1": 2, "ANSWER2": "two", "ANSWER3": "1"}, False),
    ],
)
def test_two_sums(values: dict[str, Any], expected: bool) -> None:
    text = "{ANSWER0} + {ANSWER1} == 6 and {ANSWER2} + {ANSWER3} == 2"
    assert evaluate(text, values) is expected


@pytest.mark.parametrize(
    ("top", "bottom", "expected"),
    [(10, 200, "top"), ("10", "200", "top"), (250.5, 12, "bottom"), ("three", "two", "bottom")],
)
def test_top_or_bottom(top: Any, bottom: Any, expected: str) -> None:
    text = "'top' if {ANSWER0} < {ANSWER1} else 'bottom'"
    assert evaluate(text, {"ANSWER0": top, "ANSWER1": bottom}) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [("yes", "no", True), ("yes", "yes", False), ("no", "no", False), ("Yes", "No.", True)],
)
def test_and_not(a: str, b: str, expected: bool) -> None:
    assert evaluate("{ANSWER0} and not {ANSWER1}", {"ANSWER0": a, "ANSWER1": b}) is expected


# --------------------------------------------------------------------------- the Expression API


def test_parse_then_bind_then_evaluate() -> None:
    expression = parse_template("'yes' if {ANSWER0} > {ANSWER1} else 'no'")
    assert isinstance(expression, Expression)
    assert expression.variables == ("ANSWER0", "ANSWER1")
    assert expression.variable_columns == {"ANSWER0": 10, "ANSWER1": 22}
    bound = expression.bind({"ANSWER0": "3", "ANSWER1": 1, "UNUSED": "x"})
    assert isinstance(bound, BoundExpression)
    assert isinstance(bound, Template)
    assert bound.text == expression.text
    assert bound.bindings == {"ANSWER0": "3", "ANSWER1": 1}
    assert bound.evaluate() == "yes"
    assert expression.bind({"ANSWER0": 0, "ANSWER1": 1}).evaluate() == "no"


def test_variables_in_first_appearance_order_without_duplicates() -> None:
    expression = parse_template("{B} + {A} + {B} == 3 and '{C} {A}' != ''")
    assert expression.variables == ("B", "A", "C")
    assert expression.variable_columns == {"B": 1, "A": 7, "C": 27}


def test_parse_is_cached_and_expression_is_immutable() -> None:
    expression = parse_template("{A} + 1")
    assert parse_template("{A} + 1") is expression
    with pytest.raises(AttributeError):
        expression.text = "{B}"  # type: ignore[misc]


def test_str_shows_bound_values() -> None:
    bound = parse_template("'yes' if {ANSWER0} > 0 and '{X}' == 'a' else 'no'").bind({"ANSWER0": "2", "X": "a"})
    # the expression as written, then the values: a binding never reads like an assignment
    assert str(bound) == "'yes' if {ANSWER0} > 0 and '{X}' == 'a' else 'no' (with ANSWER0='2', X='a')"


def test_str_truncates_long_values() -> None:
    bound = parse_template("{A}").bind({"A": "x" * 500})
    assert len(str(bound)) < 100
    assert str(bound).startswith("{A} (with A='xxx")


def test_evaluate_twice_gives_the_same_answer() -> None:
    bound = parse_template("{A} * 2").bind({"A": "three"})
    assert bound.evaluate() == 6
    assert bound.evaluate() == 6


# --------------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2", 3),
        ("7 - 10", -3),
        ("6 * 7", 42),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("-7 % 3", 2),
        ("2.5 * 2", 5.0),
        (".5 + 1e1", 10.5),
        ("-3", -3),
        ("+3", 3),
        ("- -3", 3),
        ("'ab' + 'cd'", "abcd"),
        ("'2' + 3", 5),
        ("True + True", 2),
        ("1 == 1", True),
        ("1 != 1", False),
        # answers read as yes/no and as numbers stay apart: 'yes' is not 'one', 'no' is not 'zero'
        ("'yes' == 'one'", False),
        ("'no' == 'zero'", False),
        ("'yes' != 'one'", True),
        ("True == 1", False),
        ("'Yes.' == True", True),
        ("'two' == 2.0", True),
        ("1 < 2", True),
        ("2 <= 2", True),
        ("3 > 4", False),
        ("4 >= 5", False),
        ("'b' > 'a'", True),
        ("'at' in 'cat'", True),
        ("'dog' in 'cat'", False),
        ("'dog' not in 'cat'", True),
        ("True and False", False),
        ("True or False", True),
        ("not True", False),
        ("not 0", True),
        ("True xor True", False),
        ("True xor False", True),
        ("0 and 5", 0),
        ("0 or 5", 5),
        ("'' or 'x'", "x"),
        ("None", None),
        ("None == None", True),
        ("'a' if None else 'b'", "b"),
    ],
)
def test_operators(text: str, expected: Any) -> None:
    result = evaluate(text, {})
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),
        ("2 * 3 % 4", 2),
        ("-2 * 3", -6),
        ("1 + 2 == 3", True),
        ("not 1 == 2", True),
        ("True or False and False", True),
        ("(True or False) and False", False),
        ("not True or True", True),
        ("not (True or True)", False),
        # xor sits between or and and
        ("True or True xor True", True),
        ("(True or True) xor True", False),
        ("True xor True and False", True),
        ("(True xor True) and False", False),
        # the conditional binds loosest and nests to the right
        ("1 if True else 2 + 10", 1),
        ("1 if False else 2 + 10", 12),
        ("1 if False else 2 if False else 3", 3),
        ("1 if False else 2 if True else 3", 2),
        ("(1 if False else 2) if True else 3", 2),
        ("'a' if 1 < 2 and 2 < 3 else 'b'", "a"),
    ],
)
def test_precedence(text: str, expected: Any) -> None:
    assert evaluate(text, {}) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 < 2 < 3", True),
        ("1 < 3 < 2", False),
        ("3 > 2 > 1", True),
        ("1 < 2 > 0", True),
        ("1 == 1 == 1", True),
        ("1 == 1 != 1", False),
        ("{A} <= {B} <= {C}", True),
        ("{C} < {A} < {B}", False),
    ],
)
def test_chained_comparisons(text: str, expected: bool) -> None:
    assert evaluate(text, {"A": "one", "B": "2", "C": 3}) is expected


def test_chained_comparison_short_circuits() -> None:
    # 'cat' > 1 would fail; the chain stops at the first false link
    assert evaluate("2 < 1 < {A}", {"A": "cat"}) is False
    with pytest.raises(EvalError, match="cannot compare"):
        evaluate("1 < 2 < {A}", {"A": "cat"})


def test_and_or_if_short_circuit() -> None:
    values = {"ZERO": 0, "ONE": 1}
    assert evaluate("False and 1 / {ZERO}", values) is False
    assert evaluate("True or 1 / {ZERO}", values) is True
    assert evaluate("'ok' if True else 1 / {ZERO}", values) == "ok"
    assert evaluate("1 / {ZERO} if False else 'ok'", values) == "ok"
    with pytest.raises(EvalError, match="division by zero"):
        evaluate("True and 1 / {ZERO}", values)


def test_and_or_return_operand_values_like_python() -> None:
    assert evaluate("{A} or 'none seen'", {"A": ""}) == "none seen"
    assert evaluate("{A} and 'both'", {"A": "yes"}) == "both"
    assert evaluate("{A} and 'both'", {"A": "no"}) is False


def test_string_literals_and_escapes() -> None:
    assert evaluate('"double"', {}) == "double"
    assert evaluate("'single'", {}) == "single"
    assert evaluate(r"'it\'s'", {}) == "it's"
    assert evaluate(r'"say \"hi\""', {}) == 'say "hi"'
    assert evaluate(r"'a\nb\tc\\d'", {}) == "a\nb\tc\\d"
    assert evaluate("'{ not a placeholder'", {}) == "{ not a placeholder"
    # a string literal is text, not coerced
    assert evaluate("'yes'", {}) == "yes"
    assert evaluate("'2'", {}) == "2"


def test_membership_in_lists_and_text() -> None:
    values = {"L": ["dog", "cat"], "S": "a black cat", "N": "two"}
    assert evaluate("'cat' in {L}", values) is True
    assert evaluate("'cow' not in {L}", values) is True
    assert evaluate("'cat' in {S}", values) is True
    assert evaluate("'two' in {N}", values) is True  # text tests use the answer as given
    assert evaluate("2 in {X}", {"X": ["one", "two"]}) is True
    with pytest.raises(EvalError, match="'in' needs"):
        evaluate("'a' in {X}", {"X": None})


# --------------------------------------------------------------------------- coercion


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("yes", True),
        ("Yes.", True),
        ("TRUE", True),
        ("no", False),
        ("No", False),
        ("false", False),
        ("2", 2),
        ("2.5", 2.5),
        ("two", 2),
        (" 3 ", 3),
        ("cat", "cat"),
        ("", ""),
        (4, 4),
        (None, None),
    ],
)
def test_bound_strings_are_coerced(answer: Any, expected: Any) -> None:
    result = evaluate("{A}", {"A": answer})
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("text", "answer", "expected"),
    [
        ("{A} == 'yes'", "yes", True),
        ("{A} == 'yes'", "Yes.", True),
        ("{A} == 'yes'", True, True),
        ("{A} == 'yes'", "no", False),
        ("{A} != 'no'", "yes", True),
        ("{A} == 'no'", False, True),
        ("{A} == 2", "two", True),
        ("{A} == 2", "2", True),
        ("{A} == 2", "three", False),
        ("{A} == 'two'", 2, True),
        ("{A} == '2'", 2, True),
        ("{A} == 'cat'", "cat", True),
        ("{A} == 'cat'", "dog", False),
        ("{A} > '1'", 2, True),
        ("{A} < 'ten'", "nine", True),
        ("'{A}' == 'yes'", "Yes", True),
        ("'{A}' == 'no'", False, True),
    ],
)
def test_comparisons_coerce_text(text: str, answer: Any, expected: bool) -> None:
    assert evaluate(text, {"A": answer}) is expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("yes", "b"), ("no", "c"), ("", "c"), ("cat", "b"), ("0", "c"), (0.0, "c"), ([], "c")],
)
def test_truthiness_follows_python_on_coerced_values(answer: Any, expected: str) -> None:
    assert evaluate("'b' if {A} else 'c'", {"A": answer}) == expected


def test_interpolation_inside_strings() -> None:
    assert evaluate("'a {X} b'", {"X": "cat"}) == "a cat b"
    assert evaluate("'{X}'", {"X": "yes"}) == "yes"
    assert evaluate("'{X}'", {"X": True}) == "yes"
    assert evaluate("'{X} and {Y}'", {"X": 2, "Y": 2.5}) == "2 and 2.5"
    assert evaluate('"{X}!"', {"X": "hi"}) == "hi!"
    assert evaluate(r"'\{X}'", {}) == "{X}"  # an escaped brace is text
    assert evaluate("'{X'", {}) == "{X"
    assert evaluate("'{1X}'", {}) == "{1X}"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "column", "expected"),
    [
        ("{A} +", 6, "unexpected end of expression, expected a value"),
        ("({A} + 1", 9, "expected ')'"),
        ("{A} = 2", 5, "use '=='"),
        ("'abc", 1, "unterminated string"),
        ("{A B}", 1, "bad placeholder"),
        ("{A} {B}", 5, "unexpected '{B}', expected an operator or the end of the expression"),
        ("'a' if {A}", 11, "expected an operator or 'else'"),
        ("{A} not {B}", 9, "expected 'in'"),
        ("", 1, "expected a value"),
        ("1 + * 2", 5, "unexpected '*'"),
        ("true", 1, "write True"),
        ("{A} && {B}", 5, "use 'and'"),
        ("1 ? 2", 3, "unexpected character '?'"),
        ("{A} andnot {B}", 5, "unexpected 'andnot'"),
        # a keyword where a value belongs is reported where it stands, not at the token after it
        ("'yes' if {A} > else 'no'", 16, "unexpected 'else', expected a value"),
        ("{A} and or {B}", 9, "unexpected 'or', expected a value"),
        ("{A} == if", 8, "unexpected 'if', expected a value"),
    ],
)
def test_syntax_errors_name_the_column(text: str, column: int, expected: str) -> None:
    with pytest.raises(EvalError) as info:
        parse_template(text)
    err = info.value
    assert err.column == column
    assert f"column {column}" in str(err)
    assert expected in str(err)
    assert err.expression == text
    assert err.__cause__ is None
    assert "lark" not in str(err).lower()


def test_missing_variable() -> None:
    expression = parse_template("{ANSWER0} and {ANSWER1}")
    with pytest.raises(EvalError, match="'ANSWER1' at column 15 has no value") as info:
        expression.bind({"ANSWER0": "yes"})
    assert info.value.column == 15
    with pytest.raises(EvalError, match="'X' at column 2 has no value"):
        evaluate("'{X}'", {})


@pytest.mark.parametrize(
    ("text", "values", "column", "expected"),
    [
        ("{A} / {B}", {"A": 1, "B": 0}, 5, "division by zero"),
        ("{A} // {B}", {"A": 1, "B": "zero"}, 5, "division by zero"),
        ("{A} % {B}", {"A": 1, "B": "0"}, 5, "division by zero"),
        ("1 + {A}", {"A": "cat"}, 3, "cannot add int 1 and str 'cat'"),
        ("{A} * 2", {"A": None}, 5, "cannot apply '*'"),
        ("{A} < 2", {"A": "cat"}, 5, "cannot compare str 'cat' with int 2 using '<'"),
        ("{A} >= {B}", {"A": None, "B": 1}, 5, "cannot compare"),
        ("-{A}", {"A": "cat"}, 1, "'-' needs a number"),
        ("'x' * 'y'", {}, 5, "cannot apply '*'"),
        # a bare name is a variable; one with no value says how to write text instead
        ("yes", {}, 1, "unknown name 'yes'"),
        ("{A} == yes", {"A": 1}, 8, "write text in quotes ('yes')"),
    ],
)
def test_evaluation_errors(text: str, values: dict[str, Any], column: int, expected: str) -> None:
    with pytest.raises(EvalError) as info:
        evaluate(text, values)
    assert info.value.column == column
    assert expected in str(info.value)
    assert f"column {column}" in str(info.value)


def test_deep_nesting_is_an_eval_error() -> None:
    assert evaluate("(" * 200 + "1" + ")" * 200, {}) == 1  # redundant parentheses cost nothing
    for text in ["-" * 5000 + "1", "(" * 3000 + "1" + " + 1)" * 3000]:
        with pytest.raises(EvalError, match="nested too deeply"):
            evaluate(text, {})


# --------------------------------------------------------------------------- safety

_PWNED = Path("/tmp/visprog_pwned")
_NASTY = [
    "') or __import__('os').system('touch /tmp/visprog_pwned') or ('",
    "__import__('os').system('touch /tmp/visprog_pwned')",
    "{ANSWER0}",
    "{__class__}",
    "().__class__.__bases__[0].__subclasses__()",
    "' + {ANSWER0} + '",
    '" or 1 or "',
    "\\' or True or \\'",
    "{",
]


@pytest.fixture
def no_pwned_file() -> Any:
    _PWNED.unlink(missing_ok=True)
    yield
    assert not _PWNED.exists()


@pytest.mark.usefixtures("no_pwned_file")
@pytest.mark.parametrize("nasty", _NASTY)
def test_bound_values_are_only_data(nasty: str) -> None:
    values = {"ANSWER0": nasty}
    assert evaluate("'yes' if {ANSWER0} == 'x' else 'no'", values) == "no"
    assert evaluate("{ANSWER0} == 'x'", values) is False
    assert evaluate("'{ANSWER0}'", values) == nasty
    assert evaluate('"{ANSWER0}"', values) == nasty
    assert evaluate("{ANSWER0}", values) == nasty
    assert evaluate("'<{ANSWER0}>' + {ANSWER0}", values) == f"<{nasty}>{nasty}"
    assert evaluate("{ANSWER0} == {ANSWER0}", values) is True
    assert not _PWNED.exists()


@pytest.mark.usefixtures("no_pwned_file")
def test_injection_in_the_template_is_a_syntax_error() -> None:
    for text in [
        "__import__('os').system('touch /tmp/visprog_pwned')",
        "{A}.__class__",
        "[x for x in ()]",
        "lambda: 1",
        # methods and functions are Eval's own short lists: nothing else is reachable
        "{A}.__class__()",
        "().__class__.__bases__[0].__subclasses__()",
        "'{}'.format({A})",
        "str.lower('A')",
        "len.__self__",
        "getattr({A}, 'real')",
        "eval('1')",
        "open('/etc/passwd')",
    ]:
        with pytest.raises(EvalError):
            evaluate(text, {"A": 1})


def test_source_never_runs_python_code() -> None:
    # the parser, the evaluator, its functions and its limits: every file of the Eval language
    folder = Path(str(expr_module.__file__)).parent
    files = sorted(folder.glob("expr*.py"))
    assert {p.name for p in files} >= {"expr.py", "expr_syntax.py", "expr_eval.py", "expr_functions.py"}
    assert Path(str(expr_syntax_module.__file__)) in files
    source = "".join(p.read_text(encoding="utf-8") for p in files)
    assert not re.search(r"\b(eval|exec|compile)\s*\(", source)
    assert not re.search(r"\b(__import__|getattr\(\s*__builtins__|importlib\.import_module)", source)


# --------------------------------------------------------------------------- properties

_TEMPLATES = [
    "'yes' if {A} > 0 else 'no'",
    "{A} xor {B}",
    "{A} + {B} == 6 and {A} - {B} == 2",
    "'top' if {A} < {B} else 'bottom'",
    "{A} and not {B}",
    "'{A}' == 'yes'",
    "{A} * {B} // {B} % 7",
    "{A} / {B} >= 1 or {A} in {B}",
    "-{A} <= +{B} < 10",
    "{A} != {B} if {A} else 'a {B} b'",
]

_VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["yes", "No.", "two", "2.5", "0", "1e400", "cat", "", "{A}"]),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_text_parses_or_raises_eval_error(text: str) -> None:
    try:
        expression = parse_template(text)
    except EvalError as err:
        assert err.column is not None
        assert 1 <= err.column <= len(text) + 1
        return
    assert set(expression.variables) == set(expression.variable_columns)


_WORDS = ["{A}", "{B}", " and ", " or ", " xor ", " not ", " in ", " if ", " else ", "True", "None"]
_ALPHABET = st.sampled_from([*"{}()'\"\\+-*/%<>=!. 0123456789AB_", *_WORDS])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ALPHABET, max_size=20).map("".join), _VALUES, _VALUES)
def test_grammar_like_text_parses_or_raises_eval_error(text: str, a: Any, b: Any) -> None:
    try:
        expression = parse_template(text)
    except EvalError:
        return
    try:
        expression.bind({"A": a, "B": b}).evaluate()
    except EvalError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(_TEMPLATES), _VALUES, _VALUES)
def test_any_bound_values_evaluate_or_raise_eval_error(template: str, a: Any, b: Any) -> None:
    bound = parse_template(template).bind({"A": a, "B": b})
    try:
        bound.evaluate()
    except EvalError as err:
        assert err.column is not None
    assert str(bound)
