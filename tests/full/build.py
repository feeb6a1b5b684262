"""Full-size model folders for the full tier: each default model at its published architecture, random weights.

Every builder reads the model's configuration from ``tests/data/full/<model>`` (see the README there for where
each file comes from), builds the model from it with seeded random weights in float32, saves the weights with
``save_pretrained`` into ``folder``, and copies the configuration files over what ``save_pretrained`` wrote. The
folder then holds what the hub holds (the configuration as published, weights in ``model.safetensors``), and
the modules load it through ``from_pretrained(folder)``: the same path as a hub id.

Tokenizers: the published vocabularies of Grounding DINO and BLIP (bert-base-uncased's ``vocab.txt``), of CLIP,
OWLv2 and Stable Diffusion (CLIP's ``vocab.json`` and ``merges.txt``) and of SmolVLM are in the data. SigLIP's is
a SentencePiece model that is not: a small one is trained here, as the tiny tests do (``tests/modules/test_clip.py``).
"""

from __future__ import annotations

import gc
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "data" / "full"
CLIP_BPE = DATA / "clip-bpe"
BERT_VOCAB = DATA / "grounding-dino-tiny" / "vocab.txt"
SEED = 0


def copy_published(name: str, folder: Path) -> Path:
    """Copy the data folder ``name`` (configuration and tokenizer files, subfolders too) into ``folder``."""
    shutil.copytree(DATA / name, folder, dirs_exist_ok=True)
    return folder


def _save(model: Any, folder: Path) -> None:
    """Save ``model``'s weights into ``folder`` and free it."""
    model.save_pretrained(folder)
    del model
    gc.collect()


def _seeded(make: Callable[[], Any]) -> Any:
    import torch

    torch.manual_seed(SEED)
    with torch.no_grad():
        return make()


def _clip_tokenizer(folder: Path, **kwargs: Any) -> None:
    """CLIP's published BPE vocabulary, saved as the tokenizer of ``folder``."""
    from transformers import CLIPTokenizer

    CLIPTokenizer(str(CLIP_BPE / "vocab.json"), str(CLIP_BPE / "merges.txt"), **kwargs).save_pretrained(folder)


# --- Loc ----------------------------------------------------------------------------------


def grounding_dino(folder: Path) -> Path:
    from transformers import AutoConfig, GroundingDinoForObjectDetection

    config = AutoConfig.from_pretrained(DATA / "grounding-dino-tiny")
    _save(_seeded(lambda: GroundingDinoForObjectDetection(config)), folder)
    return copy_published("grounding-dino-tiny", folder)


def owlv2(folder: Path) -> Path:
    from transformers import AutoConfig, Owlv2ForObjectDetection

    config = AutoConfig.from_pretrained(DATA / "owlv2-base-patch16-ensemble")
    _save(_seeded(lambda: Owlv2ForObjectDetection(config)), folder)
    # the conversion script's tokenizer: CLIP's, padded with '!' to 16 tokens
    _clip_tokenizer(folder, pad_token="!", model_max_length=16)
    return copy_published("owlv2-base-patch16-ensemble", folder)


# --- Seg and Mask -------------------------------------------------------------------------


def sam(folder: Path) -> Path:
    from transformers import AutoConfig, SamModel

    config = AutoConfig.from_pretrained(DATA / "sam-vit-base")
    _save(_seeded(lambda: SamModel(config)), folder)
    return copy_published("sam-vit-base", folder)


def mask2former(folder: Path) -> Path:
    from transformers import AutoConfig, Mask2FormerForUniversalSegmentation

    config = AutoConfig.from_pretrained(DATA / "mask2former-swin-base-coco-panoptic")
    _save(_seeded(lambda: Mask2FormerForUniversalSegmentation(config)), folder)
    return copy_published("mask2former-swin-base-coco-panoptic", folder)


# --- Select and Classify ------------------------------------------------------------------


def clip(folder: Path) -> Path:
    from transformers import AutoConfig, CLIPModel

    config = AutoConfig.from_pretrained(DATA / "clip-vit-large-patch14")
    _save(_seeded(lambda: CLIPModel(config)), folder)
    shutil.copy(CLIP_BPE / "vocab.json", folder)
    shutil.copy(CLIP_BPE / "merges.txt", folder)
    return copy_published("clip-vit-large-patch14", folder)


#: Text the SigLIP SentencePiece model is trained on: the prompts the tests send, and some more words.
_SIGLIP_TEXT = [
    "a photo of a person.",
    "a photo of a rocket.",
    "a photo of a face.",
    "a photo of a cup of coffee.",
    "a photo of a cat.",
    "the astronaut stands in front of the flag and the rocket on a sunny day.",
    "other things, people, animals, plants and objects of every colour and size.",
]


def siglip(folder: Path) -> Path:
    import sentencepiece as spm
    from transformers import AutoConfig, SiglipModel, SiglipTokenizer

    config = AutoConfig.from_pretrained(DATA / "siglip-base-patch16-224")
    _save(_seeded(lambda: SiglipModel(config)), folder)
    spm_dir = folder / "spm"
    spm_dir.mkdir()
    (spm_dir / "text.txt").write_text("\n".join(_SIGLIP_TEXT * 20) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(spm_dir / "text.txt"),
        model_prefix=str(spm_dir / "spm"),
        vocab_size=40,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        minloglevel=2,
    )
    SiglipTokenizer(vocab_file=str(spm_dir / "spm.model"), model_max_length=64).save_pretrained(folder)
    shutil.rmtree(spm_dir)
    return copy_published("siglip-base-patch16-224", folder)


# --- Vqa ----------------------------------------------------------------------------------


def blip(folder: Path) -> Path:
    from transformers import AutoConfig, BertTokenizer, BlipForQuestionAnswering

    config = AutoConfig.from_pretrained(DATA / "blip-vqa-capfilt-large")
    _save(_seeded(lambda: BlipForQuestionAnswering(config)), folder)
    # bert-base-uncased's vocabulary, with BLIP's decoder start token [DEC] added (id 30522, the config's bos)
    BertTokenizer(str(BERT_VOCAB), bos_token="[DEC]").save_pretrained(folder)
    return copy_published("blip-vqa-capfilt-large", folder)


def smolvlm(folder: Path) -> Path:
    from transformers import AutoConfig, Idefics3ForConditionalGeneration

    config = AutoConfig.from_pretrained(DATA / "SmolVLM-256M-Instruct")
    _save(_seeded(lambda: Idefics3ForConditionalGeneration(config)), folder)
    return copy_published("SmolVLM-256M-Instruct", folder)


# --- Replace ------------------------------------------------------------------------------


def stable_diffusion_inpainting(folder: Path) -> Path:
    """The pipeline's parts, each built from its published configuration: UNet, VAE, text encoder and safety
    checker get random weights; scheduler, tokenizer and feature extractor are configuration only."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPTextConfig, CLIPTextModel

    published = DATA / "stable-diffusion-inpainting"
    _save(
        _seeded(lambda: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(published / "unet"))),
        folder / "unet",
    )
    _save(_seeded(lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(published / "vae"))), folder / "vae")
    text = CLIPTextConfig.from_pretrained(published / "text_encoder")
    _save(_seeded(lambda: CLIPTextModel(text)), folder / "text_encoder")
    checker = CLIPConfig.from_pretrained(published / "safety_checker")
    _save(_seeded(lambda: StableDiffusionSafetyChecker(checker)), folder / "safety_checker")
    (folder / "tokenizer").mkdir()
    shutil.copy(CLIP_BPE / "vocab.json", folder / "tokenizer")
    shutil.copy(CLIP_BPE / "merges.txt", folder / "tokenizer")
    return copy_published("stable-diffusion-inpainting", folder)


#: backend -> builder of its full-size folder
BUILDERS: dict[str, Callable[[Path], Path]] = {
    "grounding-dino": grounding_dino,
    "owlv2": owlv2,
    "sam": sam,
    "mask2former": mask2former,
    "clip": clip,
    "siglip": siglip,
    "blip": blip,
    "vlm": smolvlm,
    "sd-inpainting": stable_diffusion_inpainting,
}
