"""Run the six benchmarks and print one combined markdown table (the one README.md shows).

``python benchmarks/run_all.py`` (add ``--quick`` for a fast smoke run with tiny sizes).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import (
    _common,
    bench_api,
    bench_batching,
    bench_check,
    bench_eval_overlap,
    bench_overhead,
    bench_replies,
    bench_startup,
    bench_throughput,
)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the scripts work")
    args = parser.parse_args(argv)
    quick = args.quick
    t0 = time.perf_counter()
    model_dir = _common.tiny_blip_dir()
    try:
        sections = [
            ("overhead", bench_overhead.measure(*((20, 2) if quick else (200, 7)))),
            ("batching", bench_batching.measure(1 if quick else 7, model_dir)),
            ("throughput", bench_throughput.measure(*((8, 1) if quick else (64, 3)), model_dir)),
            ("startup", bench_startup.measure(1 if quick else 5)),
            ("replies", bench_replies.measure(1 if quick else 15)),
            ("check", bench_check.measure(*((100, 1_000, 1) if quick else (1_000, 10_000, 3)))),
            ("api", bench_api.measure(1 if quick else 8, model_dir)),
            ("eval overlap", bench_eval_overlap.measure(*((2, 0.02, 8, None) if quick else (20, 0.2, 8, None)))),
        ]
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    lines = ["| benchmark | measurement | value | target | met |", "| --- | --- | --- | --- | --- |"]
    for name, rows in sections:
        lines += [f"| {name} | {' | '.join(row)} |" for row in rows]
    import torch

    machine = f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}"
    lines += ["", f"Python {platform.python_version()} on {machine}; total {time.perf_counter() - t0:.0f} s."]
    out = "\n".join(lines)
    print(out)
    return out


if __name__ == "__main__":
    main()
