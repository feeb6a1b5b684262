"""Checking time against program size: a program ten times as long takes about ten times as long to check.

Two programs of Eval steps, each step using the one before: one that checks, and one where every
tenth step uses an undefined variable (each gets a "did you mean" over every name assigned so far).
The timing is the shortest of a few runs; the ratio of the two sizes' times should be near their ratio (linear).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _common


def program(steps: int, undefined: bool) -> str:
    """``steps`` steps: Eval steps in a chain, then the result; with ``undefined``, every tenth one names ``X<k>``."""
    lines = ["A0=Eval(expr='1')"]
    for k in range(1, steps - 1):
        used = f"X{k}" if undefined and k % 10 == 0 else f"A{k - 1}"
        lines.append(f"A{k}=Eval(expr='{{{used}}} + {k}')")
    lines.append(f"FINAL_RESULT=Result(var=A{steps - 2})")
    return "\n".join(lines)


def measure(small: int, large: int, repeats: int) -> list[_common.Row]:
    from visprog.errors import ProgramCheckError
    from visprog.solving import check

    rows: list[_common.Row] = []
    target = f"≤ {1.5 * large / small:.0f}x"
    for undefined in (False, True):
        seconds = {}
        for steps in (small, large):
            text = program(steps, undefined)

            def run(text: str = text) -> None:
                try:
                    check(text, [])
                except ProgramCheckError:
                    pass

            seconds[steps] = _common.best_seconds(run, repeats)
        kind = "(an undefined variable every 10 steps)" if undefined else "(a valid program)"
        ratio = seconds[large] / seconds[small]
        rows.append((f"checking {small:,} steps {kind}, ms", f"{seconds[small] * 1e3:.0f}", "", ""))
        rows.append((f"checking {large:,} steps {kind}, ms", f"{seconds[large] * 1e3:.0f}", "", ""))
        rows.append(
            (
                f"{large:,} vs. {small:,} steps {kind}",
                f"{ratio:.1f}x",
                target,
                _common.met(ratio <= 1.5 * large / small),
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small programs and one run, to check the script works")
    args = parser.parse_args(argv)
    rows = measure(100, 1_000, 1) if args.quick else measure(1_000, 10_000, 3)
    out = _common.table(rows, "8. Checking time against program size")
    print(out)
    return out


if __name__ == "__main__":
    main()
