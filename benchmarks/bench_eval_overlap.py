"""`visprog eval` planning the next chunk while one runs vs. plan, then run: items per second.

A scripted OpenAI-compatible server on 127.0.0.1 answers every planning request after 200 ms (a
fast LLM service); 320 items are planned by the real planner over the real client, in chunks of 16 (the
default ``--batch-size``), 8 requests at a time (``--plan-workers 8``), and their programs run in the
real interpreter on a module that waits a set time a program (``time.sleep``, as a model call waits
on its device): the time planning a chunk takes (the shortest of 3, after a warm-up) over 16, so that
running a chunk takes as long as planning it, the case the overlap is for. The same items are
evaluated with ``overlap=False`` and with the overlap (the default); the records are checked to be
the same (timings aside).

Target: ≥ 1.8x items/s with the overlap (at most 2x when planning and running take equally long; the
first chunk's planning and the last chunk's run cannot overlap anything).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _common
from tests.servers import serve_keyed
from visprog.evaluation.datasets import load_items
from visprog.evaluation.runner import evaluate, plan_chunk
from visprog.language.signatures import Registry, module
from visprog.language.values import Image
from visprog.llm import client_from_options
from visprog.planner.core import Planner
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Runtime

CHUNK = 16  # evaluate's default batch_size
RUN = {"seconds": 0.05}  # what Look takes per program


@module
def Look(image: Image, question: str) -> str:
    """Answer a question about the image (takes a set time, like a model on its device).

    Args:
        image: the image.
        question: the question.
    """
    time.sleep(RUN["seconds"])
    return "yes"


def _registry() -> Registry:
    import visprog.modules.logic as logic

    from visprog.running.plugins import specs_in

    registry = Registry()
    registry.register_all(specs_in(logic, "builtin"), source="builtin")
    registry.register(Look)
    return registry


def _comparable(path: Path) -> list[dict[str, Any]]:
    timing = ("timings", "load_seconds", "plan_seconds", "run_seconds", "seconds")
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in path.read_text().splitlines()]


def measure(chunks: int, llm_seconds: float, plan_workers: int, run_seconds: float | None) -> list[_common.Row]:
    """The rows; ``run_seconds`` None: a program runs for the measured planning time of a chunk over 16."""
    from PIL import Image as PILImage

    n = chunks * CHUNK
    replies = {
        f"Question {k:04d}?": f"ANSWER0=Look(image=IMAGE, question='Is it {k}?')\nFINAL_RESULT=Result(var=ANSWER0)"
        for k in range(n)
    }
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    rates: dict[bool, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="visprog-bench-eval-") as tmp,
        serve_keyed(replies, slow={"seconds": llm_seconds}) as (url, asked),
    ):
        folder = Path(tmp)
        PILImage.new("RGB", (64, 48), "gray").save(folder / "gray.png")
        rows = [{"id": f"q{k:04d}", "image": "gray.png", "question": q, "answer": "yes"} for k, q in enumerate(replies)]
        (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        items = load_items(folder / "items.jsonl", "gqa", images=folder)
        registry = _registry()
        backend = client_from_options(base_url=url, model="bench", max_retries=0, timeout=30)
        planner = Planner(backend, registry=registry, cache=False, repair_rounds=0)
        interpreter = Interpreter(registry, Runtime(device_request="cpu"))
        plan_chunk(items[:CHUNK], planner, plan_workers=plan_workers)  # warm-up: imports, the first connection
        plan_seconds = _common.best_seconds(  # the shortest of 3: other processes' noise left out
            lambda: plan_chunk(items[CHUNK : 2 * CHUNK], planner, plan_workers=plan_workers), 3, warm_up=False
        )
        RUN["seconds"] = run_seconds = plan_seconds / CHUNK if run_seconds is None else run_seconds
        # warm-up (imports, the first connection, the grammar): a chunk in each mode, not timed
        for overlap in (False, True):
            evaluate(items[:CHUNK], planner, interpreter, out_path=folder / f"warm-{overlap}.jsonl", progress=False,
                     plan_workers=plan_workers, overlap=overlap)  # fmt: skip
        asked.clear()
        for overlap in (False, True):
            out = folder / f"overlap-{overlap}.jsonl"
            summary = evaluate(
                items, planner, interpreter, out_path=out, progress=False, plan_workers=plan_workers, overlap=overlap
            )
            assert summary.correct == n, f"{summary.correct} of {n} items answered right"
            rates[overlap] = summary.items_per_second
        same = _comparable(folder / "overlap-True.jsonl") == _comparable(folder / "overlap-False.jsonl")
        assert sorted(asked) == sorted(list(replies) * 2)  # every item planned once in each mode
    ratio = rates[True] / rates[False]
    setup = (
        f"{n} items in chunks of {CHUNK}; LLM reply after {llm_seconds * 1000:.0f} ms, {plan_workers} at a time; "
        f"run {run_seconds * 1000:.0f} ms a program (planning a chunk took {plan_seconds:.2f} s)"
    )
    return [
        ("setup", setup, "", ""),
        ("plan, then run (`--no-overlap`), items/s", f"{rates[False]:.2f}", "", ""),
        ("next chunk planned while one runs, items/s", f"{rates[True]:.2f}", "", ""),
        ("speed-up overlap vs. plan, then run", f"{ratio:.2f}x", "≥ 1.8x", _common.met(ratio >= 1.8)),
        ("records the same (timings aside)", "yes" if same else "no", "yes", _common.met(same)),
    ]


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and delays, to check the script works")
    parser.add_argument("--chunks", type=int, default=None, help="chunks of 16 items (default 20; --quick: 2)")
    parser.add_argument("--llm-ms", type=float, default=200.0, help="the LLM's delay per reply (default 200)")
    parser.add_argument("--plan-workers", type=int, default=8, help="LLM requests at once (default 8)")
    parser.add_argument(
        "--run-ms", type=float, default=None, help="module time a program (default: a chunk's planning time / 16)"
    )
    args = parser.parse_args(argv)
    llm_ms = 20.0 if args.quick else args.llm_ms
    chunks = args.chunks or (2 if args.quick else 20)
    run_seconds = args.run_ms / 1000 if args.run_ms is not None else None
    rows = measure(chunks, llm_ms / 1000, args.plan_workers, run_seconds)
    out = _common.table(rows, "evaluation: planning overlapped with running (scripted LLM server)")
    print(out)
    return out


if __name__ == "__main__":
    main()
