"""Which in-context examples go into a prompt: the ``k`` of a task's pool most like the text, by BM25.

A task's file may hold a large pool of examples; a prompt shows only the
:data:`DEFAULT_EXAMPLES` (or ``k``) whose input is most similar to the user's
question, statement or instruction. Similarity is Okapi BM25 over the
examples' inputs: lexical, with no model to download, and deterministic. Words
are lower-case runs of letters and digits with a plural ``s`` dropped
(``faces`` matches ``face``); a word's weight is its rarity in the pool
(Lucene's always-positive IDF), so ``how many`` singles out counting
examples in a pool where few examples count, and a word every example has
counts for little.

The chosen examples are ordered from least to most similar, so the most
similar one is the last before the text; equal scores keep the pool's order
(the earlier example is chosen first and shown first).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import TypeVar

from visprog.errors import ConfigError
from visprog.planner.tasks import Example

__all__ = ["DEFAULT_EXAMPLES", "bm25_scores", "check_examples", "select_examples", "words"]

#: How many in-context examples a prompt shows when no number is given (all of a smaller pool).
DEFAULT_EXAMPLES = 8

#: BM25's term-frequency saturation and length normalisation (the usual values).
_K1 = 1.5
_B = 0.75
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script
#: Words that say nothing about which example fits; British spellings read as the examples' American ones.
_STOP = frozenset({"the", "an", "of", "to", "it", "its", "this", "that", "these", "those"})
_SPELLING = {"colour": "color", "coloured": "colored", "grey": "gray", "centre": "center"}

T = TypeVar("T")


def words(text: str) -> list[str]:
    """``text``'s words for matching: lower-case runs of letters and digits, a plural ``s`` dropped (not from
    ``ss``), British spellings made American (``colour``), single letters (``a``, the ``s`` of ``Swift's``) and
    a few words that fit every example (``the``, ``of``) left out."""
    found = [w for w in _WORD.findall(text.lower()) if (len(w) > 1 or w.isdigit()) and w not in _STOP]
    singular = [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in found]
    return [_SPELLING.get(w, w) for w in singular]


def bm25_scores(documents: Sequence[str], query: str) -> list[float]:
    """Okapi BM25 score of each of ``documents`` for ``query`` (higher is more similar; 0 shares no word)."""
    docs = [Counter(words(d)) for d in documents]
    if not docs:
        return []
    lengths = [sum(d.values()) for d in docs]
    average = sum(lengths) / len(docs) or 1.0
    frequency = Counter(w for d in docs for w in d)
    asked = list(dict.fromkeys(words(query)))  # in order: float sums, so ties, are the same in every process
    scores = []
    for doc, length in zip(docs, lengths, strict=True):
        score = 0.0
        for w in asked:
            tf = doc.get(w, 0)
            if tf:
                idf = math.log(1 + (len(docs) - frequency[w] + 0.5) / (frequency[w] + 0.5))
                score += idf * tf * (_K1 + 1) / (tf + _K1 * (1 - _B + _B * length / average))
        scores.append(score)
    return scores


def check_examples(value: object, setting: str = "examples") -> int:
    """``value`` as a number of examples (an int of at least 0), else a :class:`ConfigError` naming ``setting``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{setting} must be a whole number of examples (0 for none), got {value!r}")
    if value < 0:
        raise ConfigError(f"{setting} must be 0 (no examples) or more, got {value}")
    return value


def select_examples(examples: Sequence[Example], text: str, k: int = DEFAULT_EXAMPLES) -> tuple[Example, ...]:
    """The ``k`` of ``examples`` whose inputs are most similar to ``text``, the most similar last.

    All of them (in that order) when there are ``k`` or fewer; none for ``k`` = 0.
    """
    k = check_examples(k)
    return _most_similar(list(examples), bm25_scores([e.input for e in examples], text), k)


def _most_similar(items: list[T], scores: list[float], k: int) -> tuple[T, ...]:
    ranked = sorted(range(len(items)), key=lambda i: (-scores[i], i))[:k]
    return tuple(items[i] for i in sorted(ranked, key=lambda i: (scores[i], i)))
