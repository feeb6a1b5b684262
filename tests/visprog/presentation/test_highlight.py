"""Syntax colouring of programs, from the language's tokens."""

from __future__ import annotations

import html
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from visprog.presentation.highlight import highlight_line, highlight_program


def spans(html: str) -> list[tuple[str, str]]:
    return re.findall(r'<span class="tok-([a-z]+)">(.*?)</span>', html)


def test_a_broken_line_still_highlights_with_error_tokens() -> None:
    html = highlight_line("X=Foo(a='open, b=@)")
    assert spans(html) == [
        ("target", "X"),
        ("punct", "="),
        ("module", "Foo"),
        ("punct", "("),
        ("arg", "a"),
        ("punct", "="),
        ("error", "&#x27;"),
        ("var", "open"),
        ("punct", ","),
        ("arg", "b"),
        ("punct", "="),
        ("error", "@"),
        ("punct", ")"),
    ]


def test_everything_is_escaped() -> None:
    html = highlight_line("X=M(q='<b>\"&</b>')  # </span><script>")
    assert "<script>" not in html and "<b>" not in html
    assert ("comment", "# &lt;/span&gt;&lt;script&gt;") in spans(html)


def test_placeholders_inside_strings_are_marked() -> None:
    html = highlight_line("A=Eval(expr=\"'yes' if {ANSWER0} > {N_1} else '{x'\")")
    assert re.findall(r'<span class="tok-placeholder">(.*?)</span>', html) == ["{ANSWER0}", "{N_1}"]


def test_names_take_their_role_from_what_follows() -> None:
    kinds = spans(highlight_line("L = List ( query = Q , max = None , xs = [ a = 1 ] )"))
    roles = [k for k, _ in kinds if k not in ("punct", "num")]
    assert roles == ["target", "module", "arg", "var", "arg", "const", "arg", "arg"]


def test_lines_are_numbered_and_trailing_blank_lines_dropped() -> None:
    html = highlight_program("A=1\r\n\nB=A\n\n", {3: "failed"})
    assert re.findall(r'<span class="([a-z -]+)" data-line="(\d+)">', html) == [
        ("line", "1"),
        ("line", "2"),
        ("line failed", "3"),
    ]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("AZaz_09 \t=(),[]'\"\\#.-+{}<>&@\r€")), max_size=60))
def test_any_line_highlights_and_reads_as_written(line: str) -> None:
    text = re.sub(r"<[^>]*>", "", highlight_line(line))
    assert html.unescape(text) == line
