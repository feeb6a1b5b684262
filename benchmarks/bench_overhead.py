"""Interpreter overhead per step: a long chain of a no-op module vs. calling the function directly.

Targets: < 50 µs per step, and < 1% of the time of a module that takes ~1 ms. Every timing is
the shortest of several runs (the work is deterministic; longer runs only add other processes' noise).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _common
from visprog.language.checker import check
from visprog.language.signatures import Registry, module
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Runtime

MODULE_SECONDS = 0.001  # the "real" module the overhead is compared with


@module
def Noop(x: int) -> int:
    """Return the number (does nothing).

    Args:
        x: a number.
    """
    return x


def chain(steps: int) -> str:
    lines = ["X0=Noop(x=0)"] + [f"X{k}=Noop(x=X{k - 1})" for k in range(1, steps)]
    return "\n".join([*lines, f"RESULT=X{steps - 1}"])


def measure(steps: int, repeats: int) -> list[_common.Row]:
    registry = Registry()
    registry.register(Noop)
    interpreter = Interpreter(registry, Runtime(device_request="cpu"))
    checked = check(chain(steps), {}, registry=registry)
    fn = Noop.fn if hasattr(Noop, "fn") else Noop

    def direct() -> None:
        x = 0
        for _ in range(steps):
            x = fn(x=x)

    def interpreted() -> None:
        interpreter.run(checked, {})

    # Each run on a program checked anew: the run plan is built too (as for every item of an evaluation).
    fresh_programs = [check(chain(steps), {}, registry=registry) for _ in range(repeats + 1)]
    fresh = iter(fresh_programs)

    def interpreted_fresh() -> None:
        interpreter.run(next(fresh), {})

    def check_and_run() -> None:
        interpreter.run(chain(steps), {})

    t_direct = _common.best_seconds(direct, repeats)
    t_run = _common.best_seconds(interpreted, repeats)
    t_fresh = _common.best_seconds(interpreted_fresh, repeats)
    t_full = _common.best_seconds(check_and_run, repeats)
    per_step_again = (t_run - t_direct) / steps
    per_step = (t_fresh - t_direct) / steps  # the targets are checked on this, the dearer case
    per_step_full = (t_full - t_direct) / steps
    # What a ~1 ms module costs, measured (time.sleep overshoots a little; the measured time is used).
    t_module = _common.best_seconds(lambda: time.sleep(MODULE_SECONDS), repeats * 5)
    relative = per_step / t_module * 100
    return [
        ("steps in the chain program", str(steps), "", ""),
        ("direct call of the no-op, µs/call", f"{t_direct / steps * 1e6:.2f}", "", ""),
        (
            "interpreter overhead, µs/step (a newly checked program)",
            f"{per_step * 1e6:.1f}",
            "< 50",
            _common.met(per_step < 50e-6),
        ),
        ("the same program run again (run plan kept), µs/step", f"{per_step_again * 1e6:.1f}", "", ""),
        ("with parsing and checking, µs/step", f"{per_step_full * 1e6:.1f}", "", ""),
        (
            f"overhead relative to a {t_module * 1e3:.2f} ms module",
            f"{relative:.2f}%",
            "< 1%",
            _common.met(relative < 1),
        ),
    ]


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny size, to check the script works")
    args = parser.parse_args(argv)
    steps, repeats = (20, 2) if args.quick else (200, 15)
    out = _common.table(measure(steps, repeats), "1. interpreter overhead per step (no-op module)")
    print(out)
    return out


if __name__ == "__main__":
    main()
