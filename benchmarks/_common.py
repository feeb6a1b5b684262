"""Shared helpers for the benchmarks: timing, markdown tables, the tiny BLIP they run on."""

from __future__ import annotations

import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/bench_x.py` puts benchmarks/ first, not the repo root
    sys.path.insert(0, str(ROOT))

Row = tuple[str, str, str, str]  # measurement, value, target, met


def best_seconds(fn: Callable[[], Any], repeats: int, *, warm_up: bool = True) -> float:
    """Warm up once, then the shortest wall time of ``repeats`` calls: the cost without the noise of
    other processes. As ``timeit`` does, the garbage collector is off while a call is timed."""
    if warm_up:
        fn()
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        finally:
            gc.enable()
    return best


def median_seconds(fn: Callable[[], Any], repeats: int, *, warm_up: bool = True) -> float:
    """Warm up once, then the median wall time of ``repeats`` calls (``time.perf_counter``)."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def table(rows: Sequence[Row], title: str | None = None) -> str:
    lines = [f"### {title}", ""] if title else []
    lines += ["| measurement | value | target | met |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    return "\n".join(lines)


def met(ok: bool) -> str:
    return "yes" if ok else "no"


def tiny_blip_dir() -> str:
    """A tiny random BLIP VQA model built from a config, exactly as tests/modules/test_vqa.py builds it."""
    from tests.modules.test_vqa import build_blip

    folder = Path(tempfile.mkdtemp(prefix="visprog-bench-blip-"))
    build_blip(folder)
    return str(folder)


def photos() -> list[Any]:
    from PIL import Image
    from skimage import data

    return [Image.fromarray(f()).convert("RGB") for f in (data.astronaut, data.chelsea, data.coffee, data.rocket)]


def blip_interpreter(model_dir: str, max_batch: int | None) -> Any:
    """An interpreter with the real Vqa (blip backend on CPU) plus the logic modules."""
    import torch
    import visprog.modules.logic as logic
    from visprog.modules.vqa import Vqa

    from visprog.language.signatures import Registry
    from visprog.running.interpreter import Interpreter
    from visprog.running.plugins import specs_in
    from visprog.running.runtime import Runtime

    torch.set_num_threads(1)  # as tests/modules/test_vqa.py does: tiny models run faster on one thread
    registry = Registry()
    registry.register_all(specs_in(logic, "builtin"), source="builtin")
    registry.register(Vqa)
    runtime = Runtime(device_request="cpu", modules={"Vqa": {"model": model_dir}})
    return Interpreter(registry, runtime, max_batch=max_batch)
