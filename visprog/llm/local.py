"""A causal LM from the Hugging Face hub or a folder, run in this process (no server), loaded on first use.

Nothing here imports ``torch`` or ``transformers`` at import time.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from visprog.errors import ConfigError, ModelUnavailableError
from visprog.llm.base import PLANNER, Message, check_n, flatten
from visprog.llm.constrained import Completion, GrammarLogits, GrammarSource
from visprog.llm.images import SEE_IMAGE_HINT, has_images
from visprog.running.hub import Placement, is_missing_weights, is_offline
from visprog.running.runtime import resolve_device

__all__ = ["DTYPES", "TransformersClient"]

#: The precisions a local model can load in; ``auto`` is the checkpoint's own.
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
#: Where the local model's device is set, as device errors name it.
_DEVICE_SOURCE = "the local planner's device: [llm] device, or TransformersClient(device=...)"


def _looks_like_path(model: str) -> bool:
    return os.path.isabs(model) or model.startswith(("./", "../", "~", ".\\", "..\\")) or model in (".", "..")


def _missing_weights(e: BaseException) -> bool:
    if is_missing_weights(e):
        return True
    try:
        from huggingface_hub.errors import HFValidationError
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    return isinstance(e, HFValidationError)


class TransformersClient:
    """A causal LM run in this process (hub id, folder or one ``.gguf`` file), loaded on first use, once.

    The weights load in ``dtype`` (``auto``: the checkpoint's own precision,
    or ``float32``, ``bfloat16``, ``float16``) directly, then move to
    ``device`` (``None`` or ``auto``: cuda, mps, cpu in that order).

    The prompt is the tokenizer's chat template when it has one, else
    :func:`~visprog.llm.base.flatten`. Greedy decoding at temperature 0
    (deterministic: ``n`` copies of one reply), sampling otherwise. Only the
    new tokens are decoded; the text ends before the first stop string.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        stop: list[str] | None = None,
    ) -> None:
        if not model:
            raise ConfigError(f"{PLANNER}: the local model is empty: give a hub id or a folder")
        if max_new_tokens < 1:
            raise ConfigError(f"{PLANNER}: max_new_tokens must be at least 1, got {max_new_tokens!r}")
        if temperature < 0:
            raise ConfigError(f"{PLANNER}: temperature must be 0 or more, got {temperature!r}")
        if dtype is not None and dtype not in DTYPES:
            raise ConfigError(f"{PLANNER}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.model = model
        self.device = device
        self.dtype = dtype or "auto"
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.stop = [s for s in stop or [] if s]
        self._loaded: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    #: the constraints :meth:`complete` follows (:mod:`visprog.llm.constrained`): one grammar, or grammars per line
    constraint_modes: tuple[str, ...] = ("grammar", "types")

    @property
    def generation(self) -> str:
        """The settings that change what the model writes: part of a plan's key."""
        return (
            f"temperature={self.temperature!r} max_new_tokens={self.max_new_tokens!r} "
            f"stop={self.stop!r} dtype={self.dtype}"
        )

    @property
    def gguf_file(self) -> str | None:
        """The GGUF file's name when the model is one ``.gguf`` file (transformers dequantizes it on loading)."""
        return os.path.basename(self.model) if self.model.lower().endswith(".gguf") else None

    @property
    def identity(self) -> str:
        path = os.path.expanduser(self.model)
        source = os.path.abspath(path) if os.path.isdir(path) or self.gguf_file else self.model
        return f"transformers:{source}"

    def __repr__(self) -> str:
        return f"TransformersClient({self.identity!r})"

    def load(self) -> tuple[Any, Any]:
        """The model (on its device, in eval mode) and the tokenizer, loaded on the first call only."""
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load_now()
            return self._loaded

    def _placement(self) -> Placement:
        device = resolve_device(self.device, source=_DEVICE_SOURCE)
        if self.dtype == "auto":
            return Placement(device, "auto")
        import torch

        return Placement(device, getattr(torch, self.dtype))

    def _load_now(self) -> tuple[Any, Any]:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise ConfigError(
                f"{PLANNER}: a local model needs torch and transformers: pip install 'visprog[models]' ({e})"
            ) from e
        source = os.path.expanduser(self.model)
        gguf: dict[str, str] = {}
        if self.gguf_file:
            if not os.path.isfile(source):
                raise ModelUnavailableError(
                    PLANNER, self.model, "the GGUF file does not exist", "download the .gguf file to that path"
                )
            source, gguf = os.path.dirname(os.path.abspath(source)), {"gguf_file": self.gguf_file}
        fetch = f"hf download {self.model}"
        if _looks_like_path(self.model) or os.path.isdir(source):
            fetch = f"hf download <model id> --local-dir {self.model}"
        if _looks_like_path(self.model) and not os.path.isdir(source):
            raise ModelUnavailableError(PLANNER, self.model, "the folder does not exist", fetch)
        folder = os.path.isdir(source)
        placement = self._placement()
        try:
            model: Any = AutoModelForCausalLM.from_pretrained(source, **gguf, **placement.pretrained_kwargs())
            tokenizer: Any = AutoTokenizer.from_pretrained(source, **gguf)
        except Exception as e:
            # a folder without the files (transformers says so with OSError or ValueError)
            if not (_missing_weights(e) or (folder and isinstance(e, ValueError))):
                raise
            if folder:
                reason = f"the folder has no usable model files ({type(e).__name__}: {e})"
            elif is_offline():
                reason = "it is not in the Hugging Face cache and HF_HUB_OFFLINE=1"
            else:
                reason = "it is not in the Hugging Face cache and the hub could not be reached"
            raise ModelUnavailableError(PLANNER, self.model, reason, fetch) from e
        model.to(placement.device)  # in the dtype it loaded in
        model.eval()
        return model, tokenizer

    def _cannot_see(self) -> ConfigError:
        """The error for a request with images: this backend runs text-only causal LMs."""
        why = (
            "it has an image processor, but local planning runs text-only causal LMs"
            if self._has_image_processor()
            else "it has no image processor"
        )
        return ConfigError(
            f"{PLANNER}: the local model '{self.model}' cannot see images ({why}); turn off see_image "
            f"({SEE_IMAGE_HINT}) or plan on a multimodal server (--base-url)"
        )

    def _has_image_processor(self) -> bool:
        """Whether the model's folder (or its hub cache entry) holds an image processor's settings; no download."""
        names = ("preprocessor_config.json", "processor_config.json")
        source = os.path.expanduser(self.model)
        if os.path.isdir(source):
            return any(os.path.isfile(os.path.join(source, name)) for name in names)
        if _looks_like_path(self.model) or os.path.isfile(source):
            return False
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
            return False
        try:
            return any(isinstance(try_to_load_from_cache(self.model, name), str) for name in names)
        except Exception:  # a name the hub would not accept: no processor to speak of
            return False

    def _prompt(self, tokenizer: Any, messages: list[Message]) -> tuple[str, bool]:
        """The prompt text, and whether it came from the chat template (which brings its own special tokens)."""
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return str(text), True
        return flatten(messages), False

    def complete(
        self,
        messages: list[Message],
        *,
        n: int = 1,
        temperature: float | None = None,
        constraint: GrammarSource | None = None,
    ) -> list[str]:
        """``n`` replies; with a ``constraint`` every token follows its grammars (:mod:`visprog.llm.constrained`)
        and each reply is a :class:`~visprog.llm.constrained.Completion` that says whether it hit the token limit."""
        import torch

        check_n(n)
        if has_images(messages):  # a text-only model must not answer as if it had seen them
            raise self._cannot_see()
        temperature = self.temperature if temperature is None else temperature
        if temperature < 0:
            raise ValueError(f"{PLANNER}: temperature must be 0 or more, got {temperature!r}")
        model, tokenizer = self.load()
        text, templated = self._prompt(tokenizer, messages)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not templated).to(model.device)
        prompt_length = int(inputs["input_ids"].shape[1])
        sample = temperature > 0
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": sample}
        if sample:
            options.update(temperature=temperature, num_return_sequences=n)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is not None:
            options["pad_token_id"] = pad
        if self.stop:
            options["stopping_criteria"] = _stop_criteria(tokenizer, self.stop, prompt_length)
        grammar = None
        if constraint is not None:
            from transformers import LogitsProcessorList

            eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else pad
            if eos is None:
                raise ConfigError(
                    f"{PLANNER}: constrained generation ends a reply with the end-of-sequence token, and the local "
                    f"model '{self.model}' has none; turn it off with --constrain none"
                )
            grammar = GrammarLogits(constraint, tokenizer, prompt_length, int(eos), self.max_new_tokens)
            options["logits_processor"] = LogitsProcessorList([grammar])
        with torch.inference_mode():
            output = model.generate(**inputs, **options)
        texts: list[str] = [
            self._cut(t) for t in tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
        ]
        if grammar is not None:
            texts = [Completion.of(t, grammar.truncated(i), grammar.seconds) for i, t in enumerate(texts)]
        return texts if sample else texts[:1] * n

    def _cut(self, text: str) -> str:
        """``text`` up to the first stop string."""
        ends = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return text[: min(ends)] if ends else text


def _stop_criteria(tokenizer: Any, stop: list[str], prompt_length: int) -> Any:
    """Generation ends for a sequence once its new text holds a stop string."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _StopStrings(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            texts = tokenizer.batch_decode(input_ids[:, prompt_length:], skip_special_tokens=True)
            done = [any(s in t for s in stop) for t in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_StopStrings()])
