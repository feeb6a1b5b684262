"""An NLVR-style program with four independent Vqa steps on a tiny BLIP: batched vs. sequential.

Batched is the default (the four Vqa steps are one call); sequential is ``max_batch=1``. Target: ≥ 2x.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _common

NLVR = """\
ANSWER0=Vqa(image=LEFT, question='How many people are there?')
ANSWER1=Vqa(image=RIGHT, question='How many people are there?')
ANSWER2=Vqa(image=LEFT, question='Is there a cat?')
ANSWER3=Vqa(image=RIGHT, question='Is there a cat?')
ANSWER4=Eval(expr="'{ANSWER0}' == '{ANSWER1}' and '{ANSWER2}' != '{ANSWER3}'")
FINAL_ANSWER=Result(var=ANSWER4)
"""


def measure(repeats: int, model_dir: str | None = None) -> list[_common.Row]:
    model_dir = model_dir or _common.tiny_blip_dir()
    left, right, *_ = _common.photos()
    inputs = {"LEFT": left, "RIGHT": right}
    batched = _common.blip_interpreter(model_dir, None)
    sequential = _common.blip_interpreter(model_dir, 1)
    a = batched.run(NLVR, inputs)  # also the warm-ups (model load)
    b = sequential.run(NLVR, inputs)
    assert [r.batch for r in a.records[:4]] == [4] * 4 and [r.batch for r in b.records[:4]] == [1] * 4
    assert [r.output for r in a.records] == [r.output for r in b.records]  # same answers either way
    t_batched = _common.median_seconds(lambda: batched.run(NLVR, inputs), repeats, warm_up=False)
    t_sequential = _common.median_seconds(lambda: sequential.run(NLVR, inputs), repeats, warm_up=False)
    ratio = t_sequential / t_batched
    return [
        ("NLVR program, sequential (max_batch=1), ms", f"{t_sequential * 1e3:.1f}", "", ""),
        ("NLVR program, batched (4 Vqa in one call), ms", f"{t_batched * 1e3:.1f}", "", ""),
        ("speed-up batched vs. sequential", f"{ratio:.2f}x", "≥ 2x", _common.met(ratio >= 2)),
    ]


def main(argv: Sequence[str] | None = None, model_dir: str | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny size, to check the script works")
    args = parser.parse_args(argv)
    own = model_dir is None
    model_dir = model_dir or _common.tiny_blip_dir()
    rows = measure(1 if args.quick else 7, model_dir)
    out = _common.table(rows, "2. NLVR-style program, four Vqa steps (tiny BLIP, CPU)")
    if own:
        shutil.rmtree(model_dir, ignore_errors=True)
    print(out)
    return out


if __name__ == "__main__":
    main()
