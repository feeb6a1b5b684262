"""The Python API in a few functions: check a program, run it on images, solve a task.

:func:`solve` is the one path from text and images to an answer, used by the
Python API, the CLI, the web app and (through :meth:`Planner.plan_samples
<visprog.planner.core.Planner.plan_samples>` and :func:`vote_runs`) evaluation:
plan with repair, draw ``samples`` programs, run the valid ones, vote on their
answers. Every step is told to an ``on_event`` listener: the planner's events
(:mod:`visprog.planner.events`) and the interpreter's (:mod:`visprog.running.events`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from visprog.errors import ConfigError, ServiceError, StepError, VisprogError
from visprog.language.checker import CheckedProgram
from visprog.language.checker import check as _check
from visprog.language.signatures import Registry
from visprog.language.values import Type, describe_value
from visprog.planner.core import Plan, Planner, PlanningError, sampling_temperature, vote
from visprog.planner.events import Voted
from visprog.planner.tasks import Task, get_task, input_names, tasks
from visprog.running.events import Listener, emit
from visprog.running.plugins import default_registry
from visprog.running.runtime import Runtime
from visprog.running.tracing import Trace

if TYPE_CHECKING:
    from visprog.running.interpreter import Interpreter

__all__ = [
    "Solution",
    "ask",
    "check",
    "create_planner",
    "edit",
    "load_inputs",
    "run",
    "solve",
    "solve_by_verb",
    "tag",
    "verify",
    "vote_runs",
]


def check(
    program: str,
    inputs: Mapping[str, Type] | Iterable[str] | None = None,
    *,
    registry: Registry | None = None,
) -> CheckedProgram:
    """Parse and type-check ``program``; raises ProgramSyntaxError or ProgramCheckError.

    ``inputs`` names what the caller will pass (default: every task's inputs, ``IMAGE``, ``LEFT``, ``RIGHT``).
    """
    if not isinstance(program, str):
        raise TypeError(f"check: program must be the program's text (a str), got {type(program).__name__}")
    if isinstance(inputs, (str, bytes)):
        raise TypeError(f"check: inputs must be a list of names or a mapping of names to types, got {inputs!r}")
    return _check(program, inputs, registry=registry or default_registry(), known_inputs=input_names())


def run(
    program: str | CheckedProgram,
    images: Mapping[str, Any] | Any,
    *,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    max_pixels: int | None = None,
    max_batch: int | None = None,
    on_event: Listener | None = None,
) -> Trace:
    """Run ``program`` and return its :class:`~visprog.running.tracing.Trace` (``trace.result`` is the answer).

    ``images`` maps input names to images (a path, bytes, a PIL image or a
    numpy array); a single image is passed as ``IMAGE``. Other values (text,
    numbers) are passed through as they are. ``on_event`` receives the run's events,
    and those of the models that load for it (:meth:`~visprog.running.runtime.Runtime.listening`).
    """
    from visprog.running.interpreter import Interpreter

    if not isinstance(program, (str, CheckedProgram)):
        raise TypeError(f"run: program must be a str or a CheckedProgram (from check), got {type(program).__name__}")
    if not isinstance(images, Mapping):
        images = {"IMAGE": images}
    loaded = load_inputs(images, max_pixels=max_pixels)
    interpreter = Interpreter(registry, runtime, max_batch=max_batch, known_inputs=input_names())
    with interpreter.runtime.listening(on_event) if on_event is not None else contextlib.nullcontext():
        return interpreter.run(program, loaded, on_event=on_event)


def load_inputs(images: Mapping[str, Any], *, max_pixels: int | None = None) -> dict[str, Any]:
    """``images`` with every image-like value (a path, bytes, a PIL image, a numpy array) loaded as an RGB image.

    Other values (text, numbers) are kept as they are. Raises
    :class:`~visprog.errors.ImageError` naming the file (or the input) that cannot be used.
    """
    from visprog.running.images import load_image

    return {
        name: load_image(value, max_pixels=max_pixels, name=_label(name, value)) if _is_image_like(value) else value
        for name, value in images.items()
    }


def _label(name: str, value: Any) -> str | None:
    """How an image error names the input: a file by its path, anything else by the input's name."""
    return None if isinstance(value, (str, os.PathLike)) else name


def _is_image_like(value: Any) -> bool:
    if isinstance(value, (bytes, os.PathLike)):
        return True
    if isinstance(value, str):
        # a path: an existing file, or a name with an image suffix (reported as missing if it is)
        from PIL import Image as PILImage

        suffix = os.path.splitext(value)[1].lower()
        return os.path.isfile(value) or ("\n" not in value and suffix in PILImage.registered_extensions())
    return hasattr(value, "size") and (hasattr(value, "mode") or hasattr(value, "shape"))


# -- planning: natural language in -------------------------------------------------------------


def create_planner(
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    style: str | None = None,
    local: str | None = None,
    registry: Registry | None = None,
    repair_rounds: int = 2,
    cache: bool = True,
    examples: int | None = None,
    see_image: bool | None = None,
    see_image_side: int | None = None,
    constrain: str | None = None,
    max_reply_bytes: int | None = None,
    **llm_options: Any,
) -> Planner:
    """A planner on an OpenAI-compatible server (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``,
    ``VISPROG_LLM_MODEL`` as the openai client reads them) or, with ``local=``, a local
    transformers causal LM (a hub id, folder or ``.gguf`` file). ``examples``: how many in-context examples a
    prompt shows (see :class:`~visprog.planner.core.Planner`). ``see_image``: the model sees the input images,
    their longer side cut to ``see_image_side`` pixels (default 512); it needs a multimodal chat model.
    ``constrain``: ``none``, ``grammar`` or ``types`` (:mod:`visprog.planner.constraint`); None lets the planner
    choose the strongest its LLM follows (``types`` for a local model, ``grammar`` for a server with a
    ``grammar_format``, else ``none``). ``max_reply_bytes``: the longest reply read (default 1 MB): a server's
    answer stops being read past it, and the planner refuses a longer reply (:class:`~visprog.planner.core.Planner`).
    """
    from visprog.llm import client_from_options

    if max_reply_bytes is not None and not local:
        llm_options["max_reply_bytes"] = max_reply_bytes

    backend = client_from_options(
        model=model, base_url=base_url, api_key=api_key, style=style or "chat", local=local, **llm_options
    )
    seeing: dict[str, Any] = {"see_image": see_image, "see_image_side": see_image_side}
    return Planner(
        backend,
        registry=registry,
        repair_rounds=repair_rounds,
        cache=cache,
        examples=examples,
        constrain=constrain,
        **{k: v for k, v in {**seeing, "max_reply_bytes": max_reply_bytes}.items() if v is not None},
    )


@dataclass
class Solution:
    """The answer to a question (or the edited image) with how it was reached.

    ``agreement`` is the share of the programs that ran whose answer is the
    winning one (1.0 for a single sample). ``samples`` holds each drawn
    program's plan (or why there is none) and its run (or why it failed).
    """

    task: str
    text: str
    result: Any
    plan: Plan
    trace: Trace
    agreement: float = 1.0
    samples: list[tuple[Plan | PlanningError | ServiceError, Trace | VisprogError | None]] = field(default_factory=list)

    @property
    def program(self) -> str:
        return self.plan.program


def solve(
    task: str | Task,
    text: str,
    images: Mapping[str, Any],
    *,
    planner: Planner | None = None,
    samples: int = 1,
    temperature: float | None = None,
    feed_errors: bool = False,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    max_pixels: int | None = None,
    max_batch: int | None = None,
    on_event: Listener | None = None,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    style: str | None = None,
    local: str | None = None,
    repair_rounds: int | None = None,
    cache: bool | None = None,
    examples: int | None = None,
    see_image: bool | None = None,
    see_image_side: int | None = None,
    constrain: str | None = None,
    max_tokens: int | None = None,
    stop: list[str] | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    grammar_format: str | None = None,
    max_reply_bytes: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Solution:
    """Plan a program for ``text`` with the ``task``'s prompts, run it on ``images``, return the :class:`Solution`.

    ``task`` is a task's name (``"gqa"``), a :class:`~visprog.planner.tasks.Task`
    or the path of a task file; ``images`` maps each of its inputs to an image
    (a path, bytes, a PIL image or a numpy array). With ``samples`` > 1, that
    many programs are drawn (at ``temperature``, 0.7 by default), the valid ones
    run together and their answers are voted on. With ``feed_errors``, a
    program that fails while running is sent back with the step's error for a
    new plan (once per sample). ``on_event`` receives every event of the planner,
    of the runs and of the models that load for them (it listens to the runtime
    while ``solve`` runs: :meth:`~visprog.running.runtime.Runtime.listening`).

    Without ``planner``, one is made by :func:`create_planner` from the options after
    ``on_event``, those given (not None); with ``planner``, giving any of them is a
    :class:`~visprog.errors.ConfigError`. ``model``, ``base_url``, ``api_key``, ``style``:
    an OpenAI-compatible server; ``local``: a transformers model run in this process
    (a hub id, folder or ``.gguf`` file), on ``device`` in ``dtype``; ``repair_rounds``,
    ``cache``, ``examples``; ``see_image=True`` shows the model the images while it
    plans (their longer side cut to ``see_image_side``); ``constrain="none"``,
    ``"grammar"`` or ``"types"`` holds its generation to valid programs, sent to a server
    in its ``grammar_format``; ``max_tokens``, ``stop``, ``timeout``, ``max_retries`` go to
    the LLM client; ``max_reply_bytes`` bounds a reply (default 1 MB).

    Raises the last sample's error when no program ran to the end: a
    :class:`~visprog.planner.core.PlanningError`, a
    :class:`~visprog.errors.StepError` (with its partial trace) or a
    :class:`~visprog.errors.ServiceError`.
    """
    from visprog.running.interpreter import Interpreter

    spec = get_task(task)
    missing = [name for name in spec.inputs if name not in images]
    if missing:
        raise VisprogError(
            f"task {spec.name} reads {', '.join(spec.inputs)}: no image was given for {', '.join(missing)}"
        )
    options = {k: v for k, v in locals().items() if k in PLANNER_OPTIONS and v is not None}
    if planner is not None and options:
        raise ConfigError(
            f"solve: {', '.join(options)} choose how a planner is made and cannot be given with planner= "
            "(give them to create_planner, or leave planner= out)"
        )
    loaded = load_inputs(images, max_pixels=max_pixels)
    planner = planner or create_planner(registry=registry, **options)
    interpreter = Interpreter(planner.registry, runtime, max_batch=max_batch, known_inputs=input_names())
    with interpreter.runtime.listening(on_event) if on_event is not None else contextlib.nullcontext():
        return _solve(spec, text, loaded, planner, interpreter, samples, temperature, feed_errors, on_event)


#: :func:`solve`'s options that make its planner: :func:`create_planner`'s, and the LLM client's.
PLANNER_OPTIONS = (
    "model",
    "base_url",
    "api_key",
    "style",
    "local",
    "repair_rounds",
    "cache",
    "examples",
    "see_image",
    "see_image_side",
    "constrain",
    "max_tokens",
    "stop",
    "timeout",
    "max_retries",
    "grammar_format",
    "max_reply_bytes",
    "device",
    "dtype",
)


def _solve(
    spec: Task,
    text: str,
    loaded: dict[str, Any],
    planner: Planner,
    interpreter: Interpreter,
    samples: int,
    temperature: float | None,
    feed_errors: bool,
    on_event: Listener | None,
) -> Solution:
    plans = planner.plan_samples(spec, text, samples, temperature=temperature, images=loaded, on_event=on_event)
    valid = [(k, plan) for k, plan in enumerate(plans) if isinstance(plan, Plan)]
    ran = interpreter.run_many([(plan.checked, loaded) for _, plan in valid], on_event=on_event)
    outcomes: list[tuple[Plan | PlanningError | ServiceError, Trace | VisprogError | None]] = [(p, None) for p in plans]
    for (k, plan), result in zip(valid, ran, strict=True):
        outcomes[k] = (plan, result)
        if feed_errors and isinstance(result, StepError):
            feedback = (
                f"An earlier program failed while running:\n{plan.program}\n"
                f"line {result.line}, {result.module}: {_RAISED_AT.sub('', result.reason)}\n"
                "Write a program that avoids this."
            )
            try:  # the new plan is drawn like the sample it replaces
                again = planner.plan(
                    spec,
                    text,
                    sample=k,
                    temperature=sampling_temperature(samples, temperature),
                    feedback=feedback,
                    images=loaded,
                    on_event=on_event,
                )
                outcomes[k] = (again, interpreter.run(again.checked, loaded, on_event=on_event))
            except VisprogError as e:  # that sample failed again; the others' runs still count
                outcomes[k] = (plan, e)
    good = [(p, t) for p, t in outcomes if isinstance(p, Plan) and isinstance(t, Trace)]
    if not good:
        last_plan, last_run = outcomes[-1]
        if isinstance(last_run, VisprogError):
            raise last_run
        assert not isinstance(last_plan, Plan)
        raise last_plan
    trace, agreement = vote_runs([t for _, t in good], samples=len(plans), on_event=on_event)
    plan = next(p for p, t in good if t is trace)
    return Solution(spec.name, text, trace.result, plan, trace, agreement, outcomes)


def vote_runs(
    runs: Sequence[Trace], *, samples: int | None = None, on_event: Listener | None = None
) -> tuple[Trace, float]:
    """The run whose answer most runs share, and that share (ties: the first run).

    Answers are compared as :func:`visprog.language.values.answer_key` says
    (``'yes'`` is ``True``), the same rule answer scoring uses. ``on_event``
    receives a :class:`~visprog.planner.events.Voted` event; ``samples`` is how
    many programs were drawn (default: one per run).
    """
    if not runs:
        raise ValueError("no runs to vote on")
    answer, agreement = vote([t.result for t in runs])
    winner = next(t for t in runs if t.result is answer)
    emit(
        on_event,
        Voted(
            tuple(_shown(t.result) for t in runs),
            _shown(answer),
            agreement,
            len(runs) if samples is None else samples,
        ),
    )
    return winner, agreement


def _shown(value: Any) -> str:
    return str(value) if isinstance(value, (str, int, float, bool)) else describe_value(value)


#: where in a module's code an exception was raised (a path of this machine): not the LLM's business
_RAISED_AT = re.compile(r" \(at [^()\n]+:\d+\)$")


def solve_by_verb(verb: str, images: Sequence[Any], text: str, **options: Any) -> Solution:
    """:func:`solve` for the task whose command is ``verb``, its inputs given in the task's order.

    ``ask``, ``verify``, ``edit`` and ``tag`` are this for the packaged tasks' verbs; which task
    and inputs they mean comes from the tasks' TOML files, so a task file that redefines one is used.
    """
    by_verb = {t.command: t for t in tasks().values()}
    task = by_verb.get(verb)
    if task is None:
        raise ConfigError(f"no task has the verb '{verb}' (the tasks' verbs: {', '.join(sorted(by_verb))})")
    if len(images) != len(task.inputs):
        raise ConfigError(
            f"task {task.name} ('{verb}') reads {len(task.inputs)} image(s) ({', '.join(task.inputs)}), "
            f"got {len(images)}"
        )
    return solve(task, text, dict(zip(task.inputs, images, strict=True)), **options)


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options a caller gave (not None), for :func:`solve`; ``llm_options`` merged in."""
    extra = options.pop("llm_options")
    return {**{k: v for k, v in options.items() if v is not None}, **extra}


def ask(
    image: Any,
    question: str,
    *,
    samples: int | None = None,
    temperature: float | None = None,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    local: str | None = None,
    constrain: str | None = None,
    examples: int | None = None,
    see_image: bool | None = None,
    repair_rounds: int | None = None,
    cache: bool | None = None,
    planner: Planner | None = None,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    max_pixels: int | None = None,
    on_event: Listener | None = None,
    **llm_options: Any,
) -> Solution:
    """Answer a question about one image (the task whose verb is ``ask``: GQA style).

    The options are :func:`solve`'s (``samples``, ``temperature``, ``planner``, ``registry``, ``runtime``,
    ``max_pixels``, ``on_event``) and :func:`create_planner`'s (``model``, ``base_url``, ``api_key``,
    ``local``, ``constrain``, ``examples``, ``see_image``, ``repair_rounds``, ``cache``); ``llm_options``
    go to the LLM client (``max_tokens``, ``stop``, ``device``, ...). Unset ones take their defaults.
    """
    options = _given({k: v for k, v in locals().items() if k not in ("image", "question")})
    return solve_by_verb("ask", [image], question, **options)


def verify(
    left: Any,
    right: Any,
    statement: str,
    *,
    samples: int | None = None,
    temperature: float | None = None,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    local: str | None = None,
    constrain: str | None = None,
    examples: int | None = None,
    see_image: bool | None = None,
    repair_rounds: int | None = None,
    cache: bool | None = None,
    planner: Planner | None = None,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    max_pixels: int | None = None,
    on_event: Listener | None = None,
    **llm_options: Any,
) -> Solution:
    """Decide whether a statement about two images holds (verb ``verify``: NLVR style); ``.result`` is a bool.

    The options are :func:`ask`'s.
    """
    options = _given({k: v for k, v in locals().items() if k not in ("left", "right", "statement")})
    return solve_by_verb("verify", [left, right], statement, **options)


def edit(
    image: Any,
    instruction: str,
    *,
    samples: int | None = None,
    temperature: float | None = None,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    local: str | None = None,
    constrain: str | None = None,
    examples: int | None = None,
    see_image: bool | None = None,
    repair_rounds: int | None = None,
    cache: bool | None = None,
    planner: Planner | None = None,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    max_pixels: int | None = None,
    on_event: Listener | None = None,
    **llm_options: Any,
) -> Solution:
    """Edit an image by instruction (verb ``edit``); ``.result`` is the edited image. The options are :func:`ask`'s."""
    options = _given({k: v for k, v in locals().items() if k not in ("image", "instruction")})
    return solve_by_verb("edit", [image], instruction, **options)


def tag(
    image: Any,
    instruction: str,
    *,
    samples: int | None = None,
    temperature: float | None = None,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    local: str | None = None,
    constrain: str | None = None,
    examples: int | None = None,
    see_image: bool | None = None,
    repair_rounds: int | None = None,
    cache: bool | None = None,
    planner: Planner | None = None,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    max_pixels: int | None = None,
    on_event: Listener | None = None,
    **llm_options: Any,
) -> Solution:
    """Tag objects in an image with knowledge (verb ``tag``); ``.result`` is an image. The options are :func:`ask`'s."""
    options = _given({k: v for k, v in locals().items() if k not in ("image", "instruction")})
    return solve_by_verb("tag", [image], instruction, **options)
