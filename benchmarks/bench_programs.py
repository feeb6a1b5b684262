"""What users wait for: the task styles' programs on every default model at its published size, on the cpu.

Each default model is built at its published architecture with random weights (``tests/full/build.py``: the
configurations in ``tests/data/full``), saved to a temporary folder and loaded through its module's own
``from_pretrained`` path, as a hub id is. Random weights give arbitrary answers but the same shapes, memory and
cost as the real checkpoints; where a step's work depends on how many objects an earlier step found, the tables
say how many there were.

Every configuration runs in a fresh child process (``multiprocessing``, spawn), so that peaks do not mix:

- **load**: one model through its module (the first call loads it): seconds, and the peak resident memory the
  load added: in all (``VmHWM`` when the load ends, reset before it, minus ``VmRSS`` before it), and split into
  anonymous memory (the model's own tensors and any copy made on the way; target: at most 1.2x the model's
  parameter and buffer bytes in that dtype) and file pages (``RssFile``: the checkpoint, memory-mapped by
  safetensors; page cache the kernel can drop, which a float32 load leaves to be paged in as the weights are
  used and a bfloat16 load from a float32 checkpoint reads once while converting);
- **program**: one program per task style (gqa, nlvr, edit as the README shows it, edit with Seg and Select,
  tag) with every model loaded first (a warm-up run on the same model pool, Replace at 64 pixels and one
  step), then timed on a fresh run cache: seconds per step and in total, and the process's peak resident memory.

Replace's ``num_inference_steps`` (``--steps``, default 50 as the module's own default) and ``size`` are the
module's options; the table says which were used. ``--compare`` runs the edit programs a second time with the
speed options the module documents (``--fast-steps``) to give a before/after ratio from one run.

Usage: ``python benchmarks/bench_programs.py [--only edit,gqa] [--dtypes float32,bfloat16] [--steps 50]``.
It takes minutes: it is not part of ``run_all.py``.
"""

from __future__ import annotations

import argparse
import multiprocessing
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

#: task style -> (program, {input: skimage photo})
PROGRAMS: dict[str, tuple[str, dict[str, str]]] = {
    # prompts/gqa.toml's first example
    "gqa": (
        "BOX0=Loc(image=IMAGE, object='truck')\n"
        "IMAGE0=CropLeftOf(image=IMAGE, box=BOX0)\n"
        "BOX1=Loc(image=IMAGE0, object='car')\n"
        "ANSWER0=Count(box=BOX1)\n"
        "FINAL_RESULT=Result(var=ANSWER0)\n",
        {"IMAGE": "coffee"},
    ),
    # prompts/nlvr.toml's first example
    "nlvr": (
        "ANSWER0=Vqa(image=LEFT, question='How many dogs are in the image?')\n"
        "ANSWER1=Vqa(image=RIGHT, question='How many dogs are in the image?')\n"
        "ANSWER2=Eval(expr='{ANSWER0} == 2 and {ANSWER1} == 0')\n"
        "FINAL_RESULT=Result(var=ANSWER2)\n",
        {"LEFT": "chelsea", "RIGHT": "coffee"},
    ),
    # the README's edit program (prompts/edit.toml's second example)
    "edit": (
        "BOX0=Loc(image=IMAGE, object='cat')\n"
        "OBJ0=Mask(image=IMAGE, object=BOX0)\n"
        "IMAGE0=Replace(image=IMAGE, object=OBJ0, prompt='a red ball')\n"
        "FINAL_RESULT=Result(var=IMAGE0)\n",
        {"IMAGE": "chelsea"},
    ),
    # the other way edit prompts find things: Seg, then Select
    "edit-seg": (
        "OBJ0=Seg(image=IMAGE)\n"
        "OBJ1=Select(image=IMAGE, object=OBJ0, query='cat', category=None)\n"
        "IMAGE0=Replace(image=IMAGE, object=OBJ1, prompt='a red ball')\n"
        "FINAL_RESULT=Result(var=IMAGE0)\n",
        {"IMAGE": "chelsea"},
    ),
    # prompts/tag.toml's first example asks the planner's LLM for the names (List): fixed categories instead
    "tag": (
        "OBJ0=FaceDet(image=IMAGE)\n"
        "OBJ1=Classify(image=IMAGE, object=OBJ0, categories=['astronaut','pilot','scientist'])\n"
        "IMAGE0=Tag(image=IMAGE, object=OBJ1)\n"
        "FINAL_RESULT=Result(var=IMAGE0)\n",
        {"IMAGE": "astronaut"},
    ),
}

#: module -> (backend, builder) of its default model
DEFAULTS: dict[str, str] = {
    "Loc": "grounding-dino",
    "Seg": "sam",
    "Mask": "sam",
    "Select": "clip",
    "Classify": "clip",
    "Vqa": "blip",
    "Replace": "sd-inpainting",
}

#: backend -> (module that loads it, the call that makes it load)
LOADERS: dict[str, str] = {
    "grounding-dino": "Loc",
    "owlv2": "Loc",
    "sam": "Mask",
    "mask2former": "Seg",
    "clip": "Select",
    "siglip": "Select",
    "blip": "Vqa",
    "vlm": "Vqa",
    "sd-inpainting": "Replace",
}

#: Options that make random weights find something, so that later steps have objects to work on.
FIND_OPTIONS: dict[str, dict[str, Any]] = {
    "Loc": {"box_threshold": 0.0},  # every box Grounding DINO gives, after its NMS
    "Seg": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    "FaceDet": {},
}


# --- memory --------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Set VmHWM back to the current VmRSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def _gib(kib: float) -> str:
    return f"{kib / 2**20:.2f}"


# --- child processes -----------------------------------------------------------------------------


def _runtime(dtype: str, modules: dict[str, dict[str, Any]]) -> Any:
    from visprog.running.runtime import ModelPool, Runtime

    class DtypeRuntime(Runtime):
        """A cpu runtime that runs models in ``dtype`` (the Runtime keeps float32 on the cpu by itself)."""

        @property
        def dtype_name(self) -> str:
            return dtype

    return DtypeRuntime(device_request="cpu", modules=modules, pool=ModelPool(), progress=False)


def _param_bytes(rt: Any) -> int:
    import torch

    total = 0
    for _, value in rt.pool.items():
        for item in value if isinstance(value, tuple) else (value,):
            parts = item.components.values() if hasattr(item, "components") else [item]
            for part in parts:
                if isinstance(part, torch.nn.Module):
                    tensors = [*part.parameters(), *part.buffers()]
                    total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def _load_child(backend: str, folder: str, dtype: str) -> dict[str, Any]:
    """Load ``backend``'s model through its module in ``dtype``: seconds, peak added, parameter bytes."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from visprog.language.values import Detection
    from visprog.running.events import ModelLoaded
    from visprog.running.plugins import default_registry
    from visprog.running.runtime import Context, RunCache

    module = LOADERS[backend]
    options: dict[str, Any] = {"model": folder, "backend": backend}
    if module == "Replace":
        options |= {"size": 64, "num_inference_steps": 1}
    rt = _runtime(dtype, {module: options})
    spec = default_registry().resolve(module, "bench")
    ctx = Context(rt, RunCache(), spec.name, spec.backends, spec.default_backend)
    cat = Image.fromarray(data.chelsea()).convert("RGB")
    boxes = [Detection((120, 20, 330, 280), 0.9, "cat", np.ones((300, 451), dtype=bool))]
    loaded: dict[str, float] = {}

    def heard(event: Any) -> None:
        if isinstance(event, ModelLoaded):
            loaded["seconds"] = event.seconds
            loaded["peak_kib"] = _status_kib("VmHWM")

    calls = {
        "Loc": lambda: spec.fn(image=cat, object="cat", ctx=ctx),
        "Seg": lambda: spec.fn(image=cat, ctx=ctx),
        "Mask": lambda: spec.fn(image=cat, object=boxes, ctx=ctx),
        "Select": lambda: spec.fn(image=cat, object=boxes, query="cat", ctx=ctx),
        "Vqa": lambda: spec.fn(image=cat, question="what is it?", ctx=ctx),
        "Replace": lambda: spec.fn(image=cat, object=boxes, prompt="a ball", ctx=ctx),
    }
    import torch  # noqa: F401  (imported before the baseline, as every module imports it)
    import transformers  # noqa: F401

    if module == "Replace":
        import diffusers  # noqa: F401
    before = _status_kib("VmRSS")
    _reset_peak()
    with rt.listening(heard):
        calls[module]()
    return {
        "backend": backend,
        "dtype": dtype,
        "seconds": loaded["seconds"],
        "added_kib": loaded["peak_kib"] - before,
        "param_bytes": _param_bytes(rt),
    }


def _program_child(
    name: str, folders: dict[str, str], dtype: str, replace: dict[str, Any], repeats: int
) -> dict[str, Any]:
    """Run ``name``'s program once to load its models, then ``repeats`` times timed: seconds per step."""
    from PIL import Image
    from skimage import data

    from visprog.running.interpreter import Interpreter
    from visprog.running.plugins import default_registry
    from visprog.running.runtime import RunCache

    source, photos = PROGRAMS[name]
    inputs = {k: Image.fromarray(getattr(data, v)()).convert("RGB") for k, v in photos.items()}

    def modules(replace_options: dict[str, Any]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for module, backend in DEFAULTS.items():
            if backend not in folders:
                continue
            out[module] = {"model": folders[backend], "backend": backend, **FIND_OPTIONS.get(module, {})}
        if "Replace" in out:
            out["Replace"] |= replace_options
        return out

    registry = default_registry()
    warm = _runtime(dtype, modules({"size": 64, "num_inference_steps": 1}))
    t0 = time.perf_counter()
    trace = Interpreter(registry, warm).run(source, inputs, cache=RunCache())
    if not trace.ok:
        raise RuntimeError(f"{name} ({dtype}) failed while loading: {trace.error or trace.records}")
    load_seconds = time.perf_counter() - t0
    rt = _runtime(dtype, modules(replace))
    rt.pool = warm.pool  # the models loaded above
    steps: dict[str, list[float]] = {}
    totals = []
    outputs = []
    for _ in range(repeats):
        trace = Interpreter(registry, rt).run(source, inputs, cache=RunCache())
        if not trace.ok:
            raise RuntimeError(f"{name} ({dtype}) failed: {trace.error}")
        for r in sorted(trace.records, key=lambda r: r.index):
            key = f"{r.target}={r.module}"
            steps.setdefault(key, []).append(r.seconds)
        totals.append(trace.seconds)
        outputs.append(_summary(trace))
    return {
        "name": name,
        "dtype": dtype,
        "load_and_warm_seconds": load_seconds,
        "steps": {k: min(v) for k, v in steps.items()},
        "total": min(totals),
        "peak_kib": _status_kib("VmHWM"),
        "found": outputs[0],
        "result": _fingerprint(trace.result),
    }


def _seg_child(folder: str, dtype: str) -> dict[str, Any]:
    """Seg (sam, its default options) on the cat, every mask upscaled before the IoU filter (as before) and only
    the masks that pass it (now), alternately in one process: seconds of each and whether the segments match."""
    import numpy as np
    import visprog.modules.segmentation as segmentation
    from PIL import Image
    from skimage import data

    from visprog.running.plugins import default_registry
    from visprog.running.runtime import Context, RunCache

    rt = _runtime(dtype, {"Seg": {"model": folder, "backend": "sam"}})
    spec = default_registry().resolve("Seg", "bench")
    cat = Image.fromarray(data.chelsea()).convert("RGB")
    passing = segmentation._iou_passing
    every = {"before": lambda low_res, iou, thresh: (low_res, iou), "after": passing}
    seconds: dict[str, float] = {}
    found: dict[str, Any] = {}
    spec.fn(image=cat, ctx=Context(rt, RunCache(), spec.name, spec.backends, spec.default_backend))  # load
    for name in ("before", "after", "before", "after"):
        segmentation._iou_passing = every[name]
        ctx = Context(rt, RunCache(), spec.name, spec.backends, spec.default_backend)
        t0 = time.perf_counter()
        result = spec.fn(image=cat, ctx=ctx)
        seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - t0)
        found[name] = [(d.box, d.score, np.packbits(d.mask).tobytes()) for d in result]
    segmentation._iou_passing = passing
    return {"seconds": seconds, "same": found["before"] == found["after"], "segments": len(found["after"])}


def _summary(trace: Any) -> dict[str, str]:
    """What each step gave, in a few characters: how many objects, or the answer."""
    out = {}
    for r in trace.records:
        value = r.output
        out[r.target] = f"{len(value)} objects" if isinstance(value, list) else repr(value)[:40]
    return out


def _fingerprint(value: Any) -> str:
    import hashlib

    import numpy as np
    from PIL import Image

    if isinstance(value, Image.Image):
        return "image " + hashlib.sha256(np.asarray(value).tobytes()).hexdigest()[:12]
    return repr(value)[:40]


def _in_child(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a fresh spawned process; its return value."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(fn, args)


# --- the benchmark ---------------------------------------------------------------------------------


def _needed(programs: Sequence[str]) -> list[str]:
    modules = {m for p in programs for m in DEFAULTS if f"={m}(" in PROGRAMS[p][0]}
    return sorted({DEFAULTS[m] for m in modules})


def build(backends: Sequence[str], root: Path) -> dict[str, str]:
    from tests.full.build import BUILDERS

    folders = {}
    for backend in backends:
        t0 = time.perf_counter()
        folders[backend] = str(BUILDERS[backend](root / backend))
        print(f"built {backend} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return folders


def _load_row(backend: str, folder: str, dtype: str) -> _common.Row:
    r = _in_child(_load_child, backend, folder, dtype)
    ratio = r["anon_kib"] * 1024 / r["param_bytes"]
    row = (
        f"load {backend} ({dtype}): s / model GiB / peak added: RSS, anonymous (x model), file GiB",
        f"{r['seconds']:.1f} / {_gib(r['param_bytes'] / 1024)} / {_gib(r['added_kib'])},"
        f" {_gib(r['anon_kib'])} ({ratio:.2f}x), {_gib(r['file_kib'])}",
        "anonymous <= 1.2x",
        _common.met(ratio <= 1.2),
    )
    print(row, file=sys.stderr, flush=True)
    return row


def _seg_row(folder: str, dtype: str) -> _common.Row:
    r = _in_child(_seg_child, folder, dtype)
    before, after = r["seconds"]["before"], r["seconds"]["after"]
    row = (
        f"Seg (sam, default options, {dtype}): s before / after upscaling only passing masks",
        f"{before:.1f} / {after:.1f} ({before / after:.2f}x; {r['segments']} segments,"
        f" {'the same' if r['same'] else 'DIFFERENT'})",
        "same segments",
        _common.met(r["same"]),
    )
    print(row, file=sys.stderr, flush=True)
    return row


def _program_row(name: str, folders: dict[str, str], dtype: str, replace: dict[str, Any], repeats: int) -> _common.Row:
    r = _in_child(_program_child, name, folders, dtype, replace, repeats)
    steps = ", ".join(f"{k} {v:.1f}" for k, v in r["steps"].items())
    found = ", ".join(f"{k}: {v}" for k, v in r["found"].items() if "objects" in v)
    row = (
        f"{name} ({dtype}): total s [steps] / peak RSS GiB",
        f"{r['total']:.1f} [{steps}] / {_gib(r['peak_kib'])}",
        "",
        found,
    )
    print(row, r["result"], file=sys.stderr, flush=True)
    return row


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(PROGRAMS), help=f"programs, comma-separated ({', '.join(PROGRAMS)})")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="float32, bfloat16 or both")
    parser.add_argument("--steps", type=int, default=50, help="Replace's num_inference_steps (its default: 50)")
    parser.add_argument("--size", type=int, default=512, help="Replace's working size (its default: 512)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per program (the shortest is shown)")
    parser.add_argument(
        "--loads",
        default="defaults",
        help="models to load: 'defaults' (every default model), 'all', 'none' or backends, comma-separated",
    )
    parser.add_argument(
        "--seg-upscaling", action="store_true", help="time Seg upscaling every mask (before) vs the passing ones"
    )
    parser.add_argument("--models", help="a folder holding built models (built there when missing)")
    args = parser.parse_args(argv)
    programs = [p.strip() for p in args.only.split(",") if p.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown:
        parser.error(f"--only: unknown program(s) {', '.join(unknown)}; known: {', '.join(PROGRAMS)}")
    if args.loads in ("all", "defaults", "none"):
        loads = {"all": list(LOADERS), "defaults": _needed(list(PROGRAMS)), "none": []}[args.loads]
    else:
        loads = [b.strip() for b in args.loads.split(",") if b.strip()]
        if set(loads) - set(LOADERS):
            parser.error(f"--loads: unknown backend(s) {', '.join(sorted(set(loads) - set(LOADERS)))}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="visprog-bench-programs-") as tmp:
        root = Path(args.models) if args.models else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        wanted = sorted(set(loads) | set(_needed(programs)) | ({"sam"} if args.seg_upscaling else set()))
        missing = [b for b in wanted if not (root / b).exists()]
        folders = {b: str(root / b) for b in wanted if b not in missing} | build(missing, root)
        load_rows: list[_common.Row] = []
        run_rows: list[_common.Row] = []
        replace = {"num_inference_steps": args.steps, "size": args.size}
        for dtype in dtypes:  # every float32 measurement first: bfloat16 is the slow one on most cpus
            for name in programs:
                run_rows.append(_program_row(name, folders, dtype, replace, args.repeats))
            if args.seg_upscaling:
                load_rows.append(_seg_row(folders["sam"], dtype))
            for backend in loads:
                load_rows.append(_load_row(backend, folders[backend], dtype))
    wall = time.perf_counter() - started
    title = (
        f"Programs at full size on the cpu ({os.cpu_count()} cores; Replace: {args.steps} steps at {args.size} px;"
        f" wall time {wall:.0f} s)"
    )
    out = _common.table(load_rows, "Model loads") + "\n\n" + _common.table(run_rows, title)
    print(out)
    return out


if __name__ == "__main__":
    main()
