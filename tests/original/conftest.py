"""Tests of the backends on the original packages: segment-anything and groundingdino-py.

They need torchvision (both packages import it) and the two packages: the
second CI lane (``make test-original``) builds a venv with the CUDA-built
``torch==2.14.1`` and ``torchvision==0.29.1``, which import and run on a
machine without a GPU. Elsewhere (the main venv: CPU torch, no torchvision)
the whole folder is skipped, with the reason.

The tiny checkpoints are made by the packages' own builders:
``segment_anything.build_sam._build_sam`` with a narrow, two-block image
encoder, and groundingdino's ``build_model`` from its Swin-T config with one
encoder and one decoder layer and a tiny random BERT saved to a folder as the
text encoder. Their weights are random, saved as the repositories save theirs
(``.pth``), and loaded back through visprog's ``--model``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data


def _unimportable() -> list[str]:
    out = []
    for name in ("torchvision", "segment_anything", "groundingdino"):
        try:
            importlib.import_module(name)
        except Exception as e:  # ImportError, or a torchvision built for another torch
            out.append(f"{name} ({type(e).__name__})")
    return out


_MISSING = _unimportable()
#: Why this folder's tests are skipped (None: they run).
SKIP_REASON = (
    f"the original-package backends need {', '.join(_MISSING)}; they run in their own venv: make test-original"
    if _MISSING
    else None
)


class _SkippedModule(pytest.Module):
    """A test file of this folder, skipped as a whole without importing it (it imports the packages)."""

    def collect(self) -> Any:
        pytest.skip(SKIP_REASON or "")


def pytest_pycollect_makemodule(module_path: Path, parent: Any) -> Any:
    if SKIP_REASON is None:
        return None  # pytest's own collection
    return _SkippedModule.from_parent(parent, path=module_path)


#: The tiny SAM image encoder, as _build_sam's arguments.
SAM_ARCH: dict[str, Any] = {
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
}
#: The tiny Grounding DINO: the package's Swin-T config, one encoder and one decoder layer, few queries.
DINO_CHANGES = {
    "enc_layers": 1,
    "dec_layers": 1,
    "num_queries": 30,
    "dim_feedforward": 128,
}
#: The BERT vocabulary of the tiny text encoder (the package finds [CLS], [SEP], '.' and '?' by name).
BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", "a", "the", "cat", "dog", "red", "car", "face"]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a busy 2-core machine, more threads mostly wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    """The astronaut at 192x160: not square, so resizing and padding matter."""
    return Image.fromarray(data.astronaut()).resize((192, 160), Image.Resampling.BILINEAR)


@pytest.fixture(scope="session")
def sam_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SAM saved as the repository's checkpoints are: the state dict of ``Sam``, in a .pth file.

    SAM's own initialization gives mask logits near zero: the weights are redrawn
    wider so that masks follow the image and predicted IoUs spread out.
    """
    import torch
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(0)
    model = _build_sam(**SAM_ARCH)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 or name.endswith("bias"):
                p.normal_(0.0, 0.3 if p.shape[-1] < 64 else 0.06)
    path = tmp_path_factory.mktemp("tiny-sam") / "tiny_sam.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def sam_reference(sam_pth: Path) -> Any:
    """The tiny SAM as the package itself loads it: ``_build_sam(..., checkpoint=path)``."""
    from segment_anything.build_sam import _build_sam

    return _build_sam(**SAM_ARCH, checkpoint=str(sam_pth)).eval()


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT with its tokenizer, saved to a folder (the text encoder in place of bert-base-uncased)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    (folder / "vocab.txt").write_text("\n".join(BERT_WORDS) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
    assert tokenizer("cat . red car .")["input_ids"] == [2, 9, 5, 11, 12, 5, 3]  # every word known, '.' included
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(BERT_WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(folder)
    return folder


def dino_config(bert: Path, folder: Path) -> Path:
    """The package's Swin-T config with :data:`DINO_CHANGES` and the tiny BERT, written to ``folder``."""
    import groundingdino
    from visprog.modules.groundingdino_original import PACKAGE_CONFIGS

    lines = (Path(groundingdino.__file__).parent / "config" / PACKAGE_CONFIGS[96]).read_text().splitlines()
    changes = {**DINO_CHANGES, "text_encoder_type": str(bert)}
    out = []
    for line in lines:
        name = line.split("=")[0].strip()
        out.append(f"{name} = {changes.pop(name)!r}" if name in changes else line)
    assert not changes, f"not in the package's config: {changes}"
    path = folder / "tiny_dino_cfg.py"
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.fixture(scope="session")
def dino_folder(tmp_path_factory: pytest.TempPathFactory, bert_dir: Path) -> Path:
    """A folder with a tiny Grounding DINO's config and checkpoint, saved as the repository saves its checkpoints:
    ``{"model": state dict, "args": argparse.Namespace}``. Built by the package's ``build_model``."""
    import torch
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig
    from visprog.modules.groundingdino_compat import install

    folder = tmp_path_factory.mktemp("tiny-dino")
    config = dino_config(bert_dir, folder)
    install()
    args = SLConfig.fromfile(str(config))
    args.device = "cpu"
    torch.manual_seed(0)
    model = build_model(args)
    with torch.no_grad():  # boxes spread over the image: the box head's last layer starts at zero
        last = model.bbox_embed[0].layers[-1]
        last.weight.normal_(0.0, 0.02)
        last.bias.normal_(0.0, 0.5)
        last.bias[2:] += 2.0  # wide and high boxes, so that some overlap
    namespace = argparse.Namespace(config_file=str(config), device="cpu", num_queries=DINO_CHANGES["num_queries"])
    torch.save({"model": model.state_dict(), "args": namespace}, folder / "tiny_dino.pth")
    return folder


def rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))
