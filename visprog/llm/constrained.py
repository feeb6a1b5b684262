"""Constrained generation for local transformers models: each next token is one the grammar allows.

The grammar comes from a :class:`GrammarSource` (the planner's
:class:`~visprog.planner.constraint.ProgramConstraint`): a first grammar, then,
each time a grammar's match is complete, the grammar of what follows, given
the text so far (so a grammar can be rebuilt per line, from what the lines
assigned), or None when the output is complete. The token-level work is
llguidance's (Lark grammars, a token mask per step): :class:`GrammarLogits` is a
``transformers`` logits processor that keeps one matcher per sequence.

Nothing here imports torch, transformers or llguidance at import time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from visprog.errors import ConfigError

__all__ = ["CONSTRAIN_MODES", "FINISH_TOKENS", "Completion", "GrammarLogits", "GrammarSource", "llguidance_tokenizer"]

#: How generation is held to valid programs: ``none``; ``grammar`` (the language's syntax, one grammar);
#: ``types`` (syntax, assigned names and types, a grammar per line). The planner builds the grammars.
CONSTRAIN_MODES: tuple[str, ...] = ("none", "grammar", "types")

#: When fewer tokens than this are left as a grammar ends, the next grammar is asked to finish the output
#: (a program's result line), so that a constrained run ends complete rather than cut at the limit.
FINISH_TOKENS = 48
#: The tokens a line takes at most to close once it must (below): a line still open when fewer than
#: FINISH_TOKENS + CLOSE_TOKENS are left closes, and the next is the result line.
CLOSE_TOKENS = 16
#: A line that has taken this many tokens, or one still open when the limit nears (:data:`CLOSE_TOKENS`), is
#: closed: where the grammar allows a token that closes something (a quote, a parenthesis, a bracket, the line),
#: only such tokens are allowed, so that a model that repeats itself inside one line still ends it, and the output.
MAX_LINE_TOKENS = 160
#: The characters that close something, by where a line is: in a text literal (``'...'``), in an Eval expression
#: (``"..."``; a quote there would open a text) and elsewhere (:func:`closers_at`).
CLOSERS = frozenset("\"')]\n")
_CLOSE_IN = {"text": frozenset("'"), "expr": frozenset('")'), "line": frozenset(")]\n")}


def closers_at(line: str, candidates: dict[int, str]) -> list[int]:
    """Of ``candidates`` (token -> its text, made of :data:`CLOSERS` only), those that only close things where
    ``line`` (the current line so far) ends: each character closes the literal, expression, call or line it is in.
    Text literals hold no quotes and Eval's texts no double quotes, so the scan below is exact."""
    stack: list[str] = []  # "expr" while inside an Eval expression, so that a text inside it returns there

    def scan(text: str, state: str, stack: list[str]) -> str | None:
        for char in text:
            if state == "text":
                if char != "'":
                    return None
                state = stack.pop() if stack else "line"
            elif char not in _CLOSE_IN[state]:
                return None
            elif state == "expr" and char == '"':
                state = "line"
            # ")" and "]" close a call, a parenthesis or a list, and stay where they are; "\n" ends the line
        return state

    state = "line"
    for char in line:
        if state == "text":
            if char == "'":
                state = stack.pop() if stack else "line"
        elif char == "'":
            stack.append(state)
            state = "text"
        elif char == '"':
            state = "line" if state == "expr" else "expr"
    return [t for t, text in candidates.items() if scan(text, state, list(stack)) is not None]


class GrammarSource(Protocol):
    """The grammars (Lark, llguidance's dialect) one constrained output follows."""

    def start(self) -> str:
        """The grammar the output starts with."""
        ...

    def next(self, text: str, finish: bool = False) -> str | None:
        """The grammar of what follows ``text`` (the output so far, whose last grammar just matched
        completely), or None when the output is complete. ``finish``: few tokens are left, so the
        grammar should lead to the end by the shortest way it has."""
        ...

    def grammar(self, syntax: str = "lark") -> str:
        """One grammar for the whole output, in ``lark`` or ``gbnf``: what a server takes."""
        ...


class Completion(str):
    """A reply, with how its constrained generation ended: ``truncated`` when it stopped at the token
    limit before the grammar was complete (the reply is then what came out so far)."""

    truncated: bool = False
    #: seconds spent computing token masks (and rebuilding grammars), for benchmarks
    constraint_seconds: float = 0.0

    @classmethod
    def of(cls, text: str, truncated: bool, constraint_seconds: float = 0.0) -> Completion:
        out = cls(text)
        out.truncated = truncated
        out.constraint_seconds = constraint_seconds
        return out


_TOKENIZERS: dict[tuple[int, int | None], Any] = {}
_TOKENIZERS_LOCK = threading.Lock()


def llguidance_tokenizer(tokenizer: Any, n_vocab: int | None = None) -> Any:
    """llguidance's view of a fast Hugging Face tokenizer with ``n_vocab`` tokens (the model's output width,
    which may exceed the tokenizer's own size), built once per tokenizer and width (about a second)."""
    with _TOKENIZERS_LOCK:
        return _wrap(tokenizer, n_vocab)


def _wrap(tokenizer: Any, n_vocab: int | None) -> Any:
    cached = _TOKENIZERS.get((id(tokenizer), n_vocab))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    try:
        import llguidance.hf
    except ImportError as e:
        raise ConfigError(
            f"constrained generation needs llguidance: pip install 'visprog[models]' ({e}); "
            "or turn it off with --constrain none ([llm] constrain = 'none')"
        ) from e
    try:
        wrapped = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab)
    except ValueError as e:
        what = "is not a fast tokenizer" if "fast" in str(e) else "is one llguidance cannot read"
        raise ConfigError(
            f"constrained generation needs a tokenizer llguidance reads, and this model's "
            f"({type(tokenizer).__name__}) {what}: {e}; turn it off with --constrain none"
        ) from e
    _TOKENIZERS[(id(tokenizer), n_vocab)] = (tokenizer, wrapped)
    return wrapped


@dataclass
class _Row:
    """One sequence's state: its matcher, the tokens it generated, and whether its output is complete."""

    matcher: Any
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    error: str | None = None
    #: where the current grammar's (line's) tokens start in ``tokens``
    line_start: int = 0


class GrammarLogits:
    """A logits processor (``model.generate(logits_processor=[...])``) that masks every token the grammar
    does not allow, for each sequence of the batch; once a sequence's output is complete, only EOS.

    ``prompt_length`` is where the generated tokens start in ``input_ids``.
    """

    def __init__(
        self,
        source: GrammarSource,
        tokenizer: Any,
        prompt_length: int,
        eos_token_id: int,
        max_new_tokens: int | None = None,
    ) -> None:
        import llguidance

        self.llguidance = llguidance
        self.source = source
        self.hf_tokenizer = tokenizer
        self.tokenizer: Any = None  # built at the first step, when the model's output width is known
        self.prompt_length = prompt_length
        self.eos = eos_token_id
        self.rows: list[_Row] = []
        self.seconds = 0.0
        #: the token limit: with fewer than FINISH_TOKENS left when a grammar ends, the next one finishes
        self.max_new_tokens = max_new_tokens
        self._first = source.start()
        self._closing: dict[int, str] | None = None  # the tokens made of closing characters only, and their text

    def closing(self, row: _Row) -> bool:
        """Whether ``row``'s line must close now: it is too long, or too few tokens are left."""
        if len(row.tokens) - row.line_start >= MAX_LINE_TOKENS:
            return True
        return self.max_new_tokens is not None and self.max_new_tokens - len(row.tokens) < FINISH_TOKENS + CLOSE_TOKENS

    def closing_mask(self, row: _Row, vocab: int) -> Any:
        """The tokens that only close what ``row``'s line has open (:func:`closers_at`), as a boolean mask."""
        import torch

        if self._closing is None:
            self._closing = {}
            for token in range(min(vocab, len(self.hf_tokenizer))):
                text = self.hf_tokenizer.decode([token])
                if text and set(text) <= CLOSERS:
                    self._closing[token] = text
        line = self.hf_tokenizer.decode(row.tokens[row.line_start :], skip_special_tokens=True)
        mask = torch.zeros(vocab, dtype=torch.bool)
        mask[closers_at(line.rsplit("\n", 1)[-1], self._closing)] = True
        return mask

    def matcher(self, grammar: str) -> Any:
        m = self.llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if m.is_error():
            raise ValueError(f"the constraint's grammar is not valid: {m.get_error()}")
        return m

    def truncated(self, row: int) -> bool:
        """Whether sequence ``row`` stopped at the token limit before its grammar's end (not when the grammar
        itself came to a dead end: that reply goes to the checker as it is)."""
        return row >= len(self.rows) or not self.rows[row].done

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        t0 = time.perf_counter()
        batch = int(input_ids.shape[0])
        vocab = int(scores.shape[1])
        if not self.rows:
            self.tokenizer = llguidance_tokenizer(self.hf_tokenizer, vocab)
            self.rows = [_Row(self.matcher(self._first)) for _ in range(batch)]
        generated = int(input_ids.shape[1]) - self.prompt_length
        allowed = torch.zeros((batch, vocab), dtype=torch.bool)
        words = (vocab + 31) // 32
        bitmask = torch.zeros((1, words), dtype=torch.int32)
        shifts = torch.arange(32, dtype=torch.int32)
        for b, row in enumerate(self.rows):
            if generated > 0 and not row.done:
                self.consume(row, int(input_ids[b, -1]))
            if row.done:
                allowed[b, self.eos] = True
                continue
            row.matcher.unsafe_compute_mask_ptr(bitmask.data_ptr(), words * 4)
            bits = ((bitmask[0].unsqueeze(1) >> shifts) & 1).reshape(-1)[:vocab]
            allowed[b] = bits.bool()
            if not bool(allowed[b].any()):  # nothing fits: end the sequence rather than emit garbage
                row.done, row.error = True, "no token fits the grammar"
                allowed[b, self.eos] = True
            elif self.closing(row):
                closers = allowed[b] & self.closing_mask(row, vocab)
                if bool(closers.any()):
                    allowed[b] = closers
        out = scores.masked_fill(~allowed.to(scores.device), float("-inf"))
        self.seconds += time.perf_counter() - t0
        return out

    def consume(self, row: _Row, token: int) -> None:
        row.tokens.append(token)
        if "\n" in self.hf_tokenizer.decode([token]):  # a line ends (one grammar may hold several lines)
            row.line_start = len(row.tokens)
        m = row.matcher
        if not m.consume_token(token) or m.is_error():
            row.done, row.error = True, m.get_error() or f"token {token} does not fit the grammar"
            return
        if m.is_stopped():  # this grammar's match is complete: what follows?
            text = self.hf_tokenizer.decode(row.tokens, skip_special_tokens=True)
            left = None if self.max_new_tokens is None else self.max_new_tokens - len(row.tokens)
            following = self.source.next(text, finish=left is not None and left < FINISH_TOKENS + CLOSE_TOKENS)
            if following is None:
                row.done = True
            else:
                row.matcher = self.matcher(following)
                row.line_start = len(row.tokens)
