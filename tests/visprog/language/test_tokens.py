"""The language's tokens, read from its grammar."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visprog.language import syntax
from visprog.language.tokens import (
    ERROR,
    NEWLINE,
    Token,
    expr_grammar,
    grammar,
    is_name,
    lexer,
    placeholder,
    tokenize,
)

PROGRAMS = Path(__file__).resolve().parents[2] / "programs"
CORPUS = sorted((PROGRAMS / "ok").glob("*.vp")) + sorted((PROGRAMS / "bad").glob("*.vp"))


def test_a_line_comes_out_as_the_grammar_terminals_with_positions() -> None:
    assert list(tokenize("X = Foo(a=-1.5, b=['x'])  # note")) == [
        Token("NAME", "X", 1, 1),
        Token("WS", " ", 1, 2),
        Token("EQUAL", "=", 1, 3),
        Token("WS", " ", 1, 4),
        Token("NAME", "Foo", 1, 5),
        Token("LPAR", "(", 1, 8),
        Token("NAME", "a", 1, 9),
        Token("EQUAL", "=", 1, 10),
        Token("NUMBER", "-1.5", 1, 11),
        Token("COMMA", ",", 1, 15),
        Token("WS", " ", 1, 16),
        Token("NAME", "b", 1, 17),
        Token("EQUAL", "=", 1, 18),
        Token("LSQB", "[", 1, 19),
        Token("STRING", "'x'", 1, 20),
        Token("RSQB", "]", 1, 23),
        Token("RPAR", ")", 1, 24),
        Token("WS", "  ", 1, 25),
        Token("COMMENT", "# note", 1, 27),
    ]


def test_every_kind_is_a_terminal_of_the_grammar() -> None:
    terminals = {t.name for t in grammar().terminals}
    assert set(lexer().kinds) == terminals
    assert lexer().punctuation == {"EQUAL", "COMMA", "LPAR", "RPAR", "LSQB", "RSQB"}


def test_characters_that_start_no_token_are_error_tokens_and_lexing_goes_on() -> None:
    tokens = list(tokenize("X=@'open €\r"))
    assert [(t.kind, t.text) for t in tokens] == [
        ("NAME", "X"),
        ("EQUAL", "="),
        (ERROR, "@"),
        (ERROR, "'"),
        ("NAME", "open"),
        ("WS", " "),
        (ERROR, "€"),
        (NEWLINE, "\r"),  # a \r at the end of the text ends the line, as in split_lines
    ]
    assert [(t.kind, t.text) for t in tokenize("A=1\rB=2")][3] == (ERROR, "\r")  # inside a line: an error


def test_lines_end_where_the_grammar_ends_them() -> None:
    text = "# head\r\nA=1\n\n  B = A\r\n"
    tokens = list(tokenize(text))
    assert [t for t in tokens if t.kind == NEWLINE] == [
        Token(NEWLINE, "\r\n", 1, 7),
        Token(NEWLINE, "\n", 2, 4),
        Token(NEWLINE, "\n", 3, 1),
        Token(NEWLINE, "\r\n", 4, 8),
    ]
    lines = syntax.split_lines(text)
    for t in tokens:
        if t.kind != NEWLINE:
            assert lines[t.line - 1][t.column - 1 :].startswith(t.text)


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_tokens_are_the_ones_lark_lexes(path: Path) -> None:
    """On every line lark's own lexer accepts, the tokens it keeps are ours, in order."""
    for line in syntax.split_lines(path.read_bytes().decode("utf-8")):
        ours = [(t.kind, t.text) for t in lexer().line(line) if t.kind not in ("WS", "COMMENT")]
        if any(kind == ERROR for kind, _ in ours):
            continue
        assert ours == [(t.type, str(t)) for t in grammar().lex(line)], line


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("AZaz_09 \t=(),[]'\"\\#.-+eE\r\n@{}€")), max_size=60))
def test_tokenize_never_raises_and_gives_the_text_back(text: str) -> None:
    tokens = list(tokenize(text))
    assert "".join(t.text for t in tokens) == text
    lines = syntax.split_lines(text)
    assert all(0 < t.line <= len(lines) for t in tokens)


def test_placeholder_is_the_eval_grammars_terminal() -> None:
    assert placeholder().pattern == expr_grammar().get_terminal("PLACEHOLDER").pattern.to_regexp()
    assert [m.group() for m in placeholder().finditer("'{A} and {B_2} but not {3} or { C}'")] == ["{A}", "{B_2}"]


def test_is_name_is_one_name_token() -> None:
    assert all(is_name(t) for t in ["IMAGE", "_x", "BOX0", "a_b_2"])
    assert not any(is_name(t) for t in ["", "0BOX", "A B", " A", "A=", "A-B", "'A'", "Ä"])


def test_built_grammars_are_cached_in_a_private_folder_and_rebuilt_when_damaged(tmp_path: Path) -> None:
    """A new process loads the LALR tables instead of rebuilding them; never from a shared temporary folder."""
    folder = tmp_path / "cache"
    env = {**os.environ, "VISPROG_CACHE_DIR": str(folder)}
    code = "from visprog.language.parser import parse; print(len(parse('A=Count(box=B)\\nR=Result(var=A)').steps))"
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and first.stdout.strip() == "2", first.stderr
    (cached,) = folder.glob("grammar-*.lark-cache")
    assert folder.stat().st_mode & 0o077 == 0  # private to the user: lark reads the file back with pickle
    cached.write_bytes(b"not a cache\n")
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.strip() == "2", again.stderr
    assert cached.read_bytes() != b"not a cache\n"  # rebuilt and stored again
