"""Constrained generation: whatever a model picks among the tokens the grammar allows is a program that checks.

A byte-level tokenizer (every byte a token, plus a few longer tokens as real
vocabularies have) and hypothesis's choices stand in for a model: at each step
any allowed token may come. The grammars are built from the registry, plugins
included, and followed through llguidance, as :mod:`visprog.llm.constrained` does.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fakes
from visprog.errors import ConfigError, ProgramError
from visprog.language import parser
from visprog.language.checker import check
from visprog.language.signatures import Registry, at_least, module, not_empty
from visprog.language.values import Image, Objects, Type
from visprog.planner.constraint import NONBLANK_TEXT, ProgramConstraint, choose_mode, line_grammar, program_grammar
from visprog.planner.grammar import to_gbnf, to_lark

llguidance = pytest.importorskip("llguidance")
from llguidance.gbnf_to_lark import gbnf_to_lark  # noqa: E402

INPUTS = {"IMAGE": Type.IMAGE}
PAIR = {"LEFT": Type.IMAGE, "RIGHT": Type.IMAGE}
EXTRA_TOKENS = ["Loc(image=", "IMAGE", ", ", "BOX0", "Count(box=", "')\n", "FINAL_RESULT=Result(var=", 'Eval(expr="']


@module
def Paste(source: Image, target: Image, object: Objects, opacity: float = 1.0) -> Image:
    """Paste the source over the objects of the target (a plugin with two images and a float).

    Args:
        source: what to paste.
        target: the image to paste onto.
        object: where.
        opacity: how much of the source shows.
    """
    return target


@module(validate={"n": at_least(3), "word": not_empty("a word")})
def Repeat(word: str, n: int, flag: bool = False) -> str:
    """Repeat a word (a plugin with validated literals).

    Args:
        word: the word.
        n: how often.
        flag: a switch.
    """
    return word * n


def _registry() -> Registry:
    reg = fakes.registry()
    reg.register(Paste)
    reg.register(Repeat)
    return reg


@pytest.fixture(scope="module")
def registry() -> Registry:
    return _registry()


@functools.cache
def _byte_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in EXTRA_TOKENS:  # longer tokens, in their byte-level spelling
        spelled = "".join(p for p, _ in byte_level.pre_tokenize_str(token))
        vocab.setdefault(spelled, len(vocab))
    vocab["<eos>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = byte_level
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return _byte_tokenizer()


def _walk(source: ProgramConstraint, tokenizer: Any, choose: Any, limit: int = 700) -> tuple[str, bool]:
    """Follow the grammars token by token, each token chosen by ``choose`` among those allowed; the
    text, and whether the output came to its end within ``limit`` tokens."""
    import llguidance.hf

    lltok = llguidance.hf.from_tokenizer(tokenizer)
    matcher = llguidance.LLMatcher(lltok, source.start(), log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    tokens: list[int] = []
    vocab = len(tokenizer)
    for _ in range(limit):
        mask = matcher.compute_bitmask()
        allowed = [t for t in range(vocab) if mask[t // 8] >> (t % 8) & 1 and t != tokenizer.eos_token_id]
        assert allowed, f"nothing allowed after {tokenizer.decode(tokens)!r}"
        token = choose(allowed)
        tokens.append(token)
        assert matcher.consume_token(token), matcher.get_error()
        if matcher.is_stopped():
            text = tokenizer.decode(tokens)
            following = source.next(text)
            if following is None:
                return text, True
            matcher = llguidance.LLMatcher(lltok, following, log_level=0)
            assert not matcher.is_error(), matcher.get_error()
    return tokenizer.decode(tokens), False


def _chooser(data: st.DataObject, tok: Any) -> Any:
    """Any allowed token; half the time one that closes something (a quote, a call, a line), if one is
    allowed, so that walks come to an end within the limit."""
    closing = {tok.convert_tokens_to_ids(tok.tokenize(c))[0] for c in ("'", ")", "\n", '"', "]")}

    def choose(allowed: list[int]) -> int:
        ends = [t for t in allowed if t in closing]
        if ends and data.draw(st.booleans()):
            return data.draw(st.sampled_from(ends))
        return data.draw(st.sampled_from(allowed))

    return choose


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), pair=st.booleans())
def test_every_program_constrained_by_types_parses_and_checks(data: st.DataObject, pair: bool) -> None:
    registry = _registry()
    inputs = PAIR if pair else INPUTS
    tok = _byte_tokenizer()

    text, complete = _walk(ProgramConstraint(registry, inputs, "types"), tok, _chooser(data, tok))
    if not complete:
        return  # a walk that wandered past the token limit: what the planner reports as truncated
    checked = check(text, inputs, registry=registry, known_inputs=inputs)
    assert checked.steps[checked.result].step.is_result
    assert text.rstrip("\n").splitlines()[-1].startswith("FINAL_RESULT=Result(var=")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_program_constrained_by_the_grammar_parses(data: st.DataObject) -> None:
    tok = _byte_tokenizer()
    text, complete = _walk(ProgramConstraint(_registry(), INPUTS, "grammar"), tok, _chooser(data, tok))
    if complete:
        program = parser.parse(text)
        assert program.steps[-1].is_result


def test_a_line_offers_only_modules_its_variables_can_feed(registry: Registry) -> None:
    first = to_lark(line_grammar(registry, INPUTS, 0))
    assert "Count(" not in first  # no Objects yet
    assert "FINAL_RESULT" not in first  # no step yet
    assert '"Loc(image=IMAGE"' in first
    later = ProgramConstraint(registry, INPUTS).next("BOX0=Loc(image=IMAGE, object='dog')\n")
    assert later is not None
    assert '"Count(box=BOX0)"' in later
    assert '"FINAL_RESULT=Result(var=" ("IMAGE" | "BOX0")' in later
    # Paste's target takes either image; the float literal or a number variable for opacity.
    assert "Paste(" in later


def test_validators_say_which_literals_they_accept(registry: Registry) -> None:
    text = to_lark(line_grammar(registry, INPUTS, 0))
    repeat = text.split("Repeat(")[1].split("\n")[0]
    assert "[1-9][0-9]{1,8}" in repeat and '"3"' in repeat and '"9"' in repeat and '"2"' not in repeat  # n >= 3
    assert NONBLANK_TEXT.regex in repeat  # word: not blank
    after = ProgramConstraint(registry, INPUTS).next("OBJ0=FaceDet(image=IMAGE)\n")
    assert after is not None and "|face_with_tongue|" in after  # Emoji's names, all of them, as one lexeme


def test_the_grammars_are_valid_lark_and_gbnf(registry: Registry) -> None:
    for grammar in (program_grammar(registry), line_grammar(registry, {**PAIR, "N": Type.INT}, 2)):
        lark = to_lark(grammar)
        assert llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(lark)) == ""
        converted = gbnf_to_lark(to_gbnf(grammar))
        assert llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(converted)) == ""


def test_programs_outside_the_grammar_are_refused(registry: Registry, tokenizer: Any) -> None:
    import llguidance.hf

    lltok = llguidance.hf.from_tokenizer(tokenizer)
    start = ProgramConstraint(registry, INPUTS).start()

    def fits(text: str) -> bool:
        m = llguidance.LLMatcher(lltok, start, log_level=0)
        return m.consume_tokens(tokenizer(text)["input_ids"]) and not m.is_error()

    assert fits("BOX0=Loc(image=IMAGE, object='dog')\n")
    assert not fits("BOX0=Loc(image=BOX9, object='dog')\n")  # an unassigned variable
    assert not fits("BOX0=Locate(image=IMAGE, object='dog')\n")  # an alias: canonical names only
    assert not fits("BOX0=Loc(IMAGE, 'dog')\n")  # positional: canonical form only
    assert not fits("BOX0=Count(box=IMAGE)\n")  # no Objects yet
    assert not fits("BOX0=Loc(image=IMAGE, object='')\n")  # text is never empty
    assert not fits("W=Repeat(word='\u00a0 ,\t', n=3)\n")  # Repeat's word must not be blank, to str.strip too
    assert fits("W=Repeat(word=' ,dog', n=3)\n")
    assert not fits("W=Repeat(word='dog', n=2)\n")  # n: at least 3


def test_objects_are_offered_only_with_images_of_their_frame(registry: Registry, tokenizer: Any) -> None:
    import llguidance.hf

    lltok = llguidance.hf.from_tokenizer(tokenizer)
    c = ProgramConstraint(registry, PAIR)
    so_far = "BOX0=Loc(image=LEFT, object='dog')\nIMAGE0=Crop(image=LEFT, box=BOX0)\nX=Eval(expr='1')\n"
    grammar = c.next(so_far)
    assert grammar is not None

    def fits(line: str) -> bool:
        m = llguidance.LLMatcher(lltok, grammar, log_level=0)
        return m.consume_tokens(tokenizer(line)["input_ids"]) and not m.is_error()

    assert fits("IMAGE1=Tag(image=LEFT, object=BOX0)\n")
    assert fits("IMAGE1=Tag(image=IMAGE0, object=BOX0)\n")  # a crop of LEFT: mapped when it runs
    assert not fits("IMAGE1=Tag(image=RIGHT, object=BOX0)\n")  # LEFT's objects on RIGHT
    assert not fits("IMAGE1=Tag(image=X, object=BOX0)\n")  # an Eval's value is no image


def test_the_constraint_mode_is_chosen_and_checked() -> None:
    assert choose_mode(None, ("grammar", "types"), "local") == "types"
    assert choose_mode(None, ("grammar",), "server") == "grammar"
    assert choose_mode(None, (), "server") == "none"
    assert choose_mode("none", (), "server") == "none"
    with pytest.raises(ConfigError, match="constrain must be one of none, grammar, types"):
        choose_mode("strict", ("types",), "local")
    with pytest.raises(ConfigError, match="cannot be used with openai:gpt: a local model"):
        choose_mode("types", (), "openai:gpt")
    with pytest.raises(ConfigError, match="it follows grammar"):
        choose_mode("types", ("grammar",), "openai:gpt")
    with pytest.raises(ValueError, match="'grammar' or 'types'"):
        ProgramConstraint(Registry(), INPUTS, "none")


def test_next_after_the_result_line_is_the_end(registry: Registry) -> None:
    c = ProgramConstraint(registry, INPUTS)
    assert c.next("BOX0=Loc(image=IMAGE, object='dog')\nFINAL_RESULT=Result(var=BOX0)") is None
    assert ProgramConstraint(registry, INPUTS, "grammar").next("anything") is None
    with pytest.raises(ProgramError):
        check("FINAL_RESULT=Result(var=BOX0)", INPUTS, registry=registry)  # what the grammar never allows first


def test_near_the_token_limit_the_next_line_is_the_result_line(registry: Registry) -> None:
    c = ProgramConstraint(registry, INPUTS)
    text = "BOX0=Loc(image=IMAGE, object='dog')\n"
    finishing = c.next(text, finish=True)
    assert finishing is not None
    assert finishing.splitlines()[0] == 'start: "FINAL_RESULT=Result(var=" ("IMAGE" | "BOX0") ")"'
    assert "Count(" not in finishing
    first = c.next("", finish=True)  # nothing assigned yet: a step must come first
    assert first is not None and "Loc(" in first


def _follows(grammar: str, text: str, tokenizer: Any) -> bool:
    """Whether ``text`` is a whole match of ``grammar`` (token by token, as generation would write it)."""
    import llguidance.hf

    matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(tokenizer), grammar, log_level=0)
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        if not matcher.consume_token(token):
            return False
    return matcher.is_accepting()


def test_an_eval_expression_has_a_greatest_length(registry: Registry, tokenizer: Any) -> None:
    """A model that repeats itself inside one Eval reaches the expression's end, not the token limit."""
    source = ProgramConstraint(registry, INPUTS, "types")
    line = source.next("BOX0=Loc(image=IMAGE, object='dog')\nN=Count(box=BOX0)\n")
    assert line is not None

    def ors(k: int) -> str:
        return 'A=Eval(expr="' + " or ".join(["{N} > 1"] * k) + '")\n'

    def parens(k: int) -> str:
        return 'A=Eval(expr="' + "(" * k + "{N} > 1" + ")" * k + '")\n'

    assert _follows(line, ors(4), tokenizer)
    assert not _follows(line, ors(5), tokenizer)
    assert _follows(line, parens(2), tokenizer)
    assert not _follows(line, parens(3), tokenizer)
    assert _follows(line, 'A=Eval(expr="not ({N} > 1 and {N} < 5) or {N} == 3")\n', tokenizer)
