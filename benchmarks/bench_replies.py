"""The reply corpus (tests/programs/replies/): the share of model-style replies the planner reads as a
program that checks without a repair round, and what extraction adds to parsing, per step."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _common

REPLIES = _common.ROOT / "tests" / "programs" / "replies"

#: Measured once on this corpus (100 replies) with the extraction that only knew fences, a
#: ``Program:`` label and plain ``NAME=...`` lines: 31 replies checked without a repair round.
BEFORE = (31, 100)


def replies() -> list[str]:
    return [path.read_bytes().decode("utf-8") for path in sorted(REPLIES.glob("*.txt"))]


def measure(repeats: int) -> list[_common.Row]:
    from visprog.errors import ProgramError
    from visprog.language.parser import parse
    from visprog.planner.extract import extract_program, read_reply
    from visprog.running.plugins import default_registry
    from visprog.solving import check

    registry = default_registry()
    texts = replies()
    readings = [read_reply(text, lambda p: check(p, registry=registry)) for text in texts]
    checked = sum(1 for r in readings if r.error is None and r.program)
    programs = [extract_program(text) for text in texts]
    parsed = []
    for program in programs:
        try:
            parsed.append((program, len(parse(program).steps)))
        except ProgramError:
            pass
    steps = sum(n for _, n in parsed)
    kept = [text for text, program in zip(texts, programs, strict=True) if any(program == p for p, _ in parsed)]

    def extract_all() -> None:
        for text in kept:
            extract_program(text)

    def parse_all() -> None:
        for program, _ in parsed:
            parse(program)

    def both() -> None:
        for text in kept:
            parse(extract_program(text))

    extract_us = _common.best_seconds(extract_all, repeats) / steps * 1e6
    parse_us = _common.best_seconds(parse_all, repeats) / steps * 1e6
    both_us = _common.best_seconds(both, repeats) / steps * 1e6
    before, total = BEFORE
    now = checked / len(texts)
    ratio = both_us / parse_us
    return [
        ("replies in the corpus", str(len(texts)), "≥ 80", _common.met(len(texts) >= 80)),
        (
            f"checking without a repair round, before (fixed reference, {total} replies)",
            f"{before / total:.0%}",
            "",
            "",
        ),
        (
            "checking without a repair round, now",
            f"{now:.0%} ({checked})",
            "> before",
            _common.met(now > before / total),
        ),
        (f"extraction, µs/step ({steps} steps)", f"{extract_us:.1f}", "", ""),
        ("parsing the extracted programs, µs/step", f"{parse_us:.1f}", "", ""),
        ("extraction + parsing vs. parsing alone", f"{ratio:.2f}x", "≤ 1.5x", _common.met(ratio <= 1.5)),
    ]


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one repeat, to check the script works")
    args = parser.parse_args(argv)
    out = _common.table(measure(1 if args.quick else 15), "5. Reading model replies")
    print(out)
    return out


if __name__ == "__main__":
    main()
