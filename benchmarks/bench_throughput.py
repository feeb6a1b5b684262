"""Throughput of 64 GQA-style programs (Vqa + Eval) with ``run_many`` at max_batch 1, 4 and 16 on a tiny BLIP.

Target: ≥ 3x programs/s at max_batch 16 over max_batch 1.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _common
from visprog.language.checker import check

QUESTIONS = ["What is the person wearing?", "Is there a cat?", "What color is the flag?", "How many mugs are there?"]
BATCHES = (1, 4, 16)


def program(k: int) -> str:
    question = QUESTIONS[k % len(QUESTIONS)]
    return (
        f"ANSWER0=Vqa(image=IMAGE, question='{question}')\n"
        "ANSWER1=Eval(expr=\"'yes' if '{ANSWER0}' == 'yes' else '{ANSWER0}'\")\n"
        "FINAL_RESULT=Result(var=ANSWER1)"
    )


def measure(n: int, repeats: int, model_dir: str | None = None) -> list[_common.Row]:
    model_dir = model_dir or _common.tiny_blip_dir()
    images = _common.photos()
    jobs: list[tuple[str, dict[str, Any]]] = [(program(k), {"IMAGE": images[k % len(images)]}) for k in range(n)]
    rates: dict[int, float] = {}
    answers: dict[int, list[Any]] = {}
    for max_batch in BATCHES:
        interpreter = _common.blip_interpreter(model_dir, max_batch)
        checked = [(check(p, list(inputs), registry=interpreter.registry), inputs) for p, inputs in jobs]
        results = interpreter.run_many(checked)  # also the warm-up
        answers[max_batch] = [getattr(r, "result", r) for r in results]
        seconds = _common.median_seconds(functools.partial(interpreter.run_many, checked), repeats, warm_up=False)
        rates[max_batch] = n / seconds
    assert answers[1] == answers[4] == answers[16]  # batching changes the speed, not the answers
    rows: list[_common.Row] = []
    for max_batch in BATCHES:
        rows.append((f"{n} programs, max_batch {max_batch}, programs/s", f"{rates[max_batch]:.1f}", "", ""))
    for max_batch in BATCHES[1:]:
        ratio = rates[max_batch] / rates[1]
        target = "≥ 3x" if max_batch == 16 else ""
        ok = _common.met(ratio >= 3) if max_batch == 16 else ""
        rows.append((f"speed-up max_batch {max_batch} vs. 1", f"{ratio:.2f}x", target, ok))
    return rows


def main(argv: Sequence[str] | None = None, model_dir: str | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny size, to check the script works")
    args = parser.parse_args(argv)
    own = model_dir is None
    model_dir = model_dir or _common.tiny_blip_dir()
    n, repeats = (8, 1) if args.quick else (64, 3)
    out = _common.table(measure(n, repeats, model_dir), f"3. throughput of {n} GQA-style programs (tiny BLIP, CPU)")
    if own:
        shutil.rmtree(model_dir, ignore_errors=True)
    print(out)
    return out


if __name__ == "__main__":
    main()
