"""segment-anything's SAM state dict as transformers' ``SamModel``: the key renaming of transformers'
``convert_sam_to_hf.py``, and the ``SamConfig`` of the architecture the state dict describes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["to_transformers", "transformers_config"]

#: segment-anything's names -> transformers', applied in this order to every key that holds them.
RENAMES = {
    "iou_prediction_head.layers.0": "iou_prediction_head.proj_in",
    "iou_prediction_head.layers.1": "iou_prediction_head.layers.0",
    "iou_prediction_head.layers.2": "iou_prediction_head.proj_out",
    "mask_decoder.output_upscaling.0": "mask_decoder.upscale_conv1",
    "mask_decoder.output_upscaling.1": "mask_decoder.upscale_layer_norm",
    "mask_decoder.output_upscaling.3": "mask_decoder.upscale_conv2",
    "mask_downscaling.0": "mask_embed.conv1",
    "mask_downscaling.1": "mask_embed.layer_norm1",
    "mask_downscaling.3": "mask_embed.conv2",
    "mask_downscaling.4": "mask_embed.layer_norm2",
    "mask_downscaling.6": "mask_embed.conv3",
    "point_embeddings": "point_embed",
    "pe_layer.positional_encoding_gaussian_matrix": "shared_embedding.positional_embedding",
    "image_encoder": "vision_encoder",
    "neck.0": "neck.conv1",
    "neck.1": "neck.layer_norm1",
    "neck.2": "neck.conv2",
    "neck.3": "neck.layer_norm2",
    "patch_embed.proj": "patch_embed.projection",
    ".norm": ".layer_norm",
    "blocks": "layers",
}
#: The mask decoder's hypernetwork MLPs: layers 0, 1, 2 become proj_in, layers.0, proj_out.
HYPERNETWORK = re.compile(r".*\.output_hypernetworks_mlps\.\d+\.layers\.(\d)\..*")
HYPERNETWORK_LAYERS = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}


def to_transformers(state: Mapping[str, Any]) -> dict[str, Any]:
    """A segment-anything ``Sam`` state dict with transformers ``SamModel``'s names."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key in ("pixel_mean", "pixel_std"):  # the image processor normalizes
            continue
        for old, new in RENAMES.items():
            key = key.replace(old, new)
        found = HYPERNETWORK.match(key)
        if found:
            layer = found.group(1)
            key = key.replace(f"layers.{layer}.", f"{HYPERNETWORK_LAYERS[layer]}.")
        out[key] = value
    # transformers keeps the prompt encoder's random Fourier matrix twice: also shared with the image's positions
    out["shared_image_embedding.positional_embedding"] = out["prompt_encoder.shared_embedding.positional_embedding"]
    return out


def transformers_config(arch: Mapping[str, Any]) -> Any:
    """The ``SamConfig`` of a SAM that ``segment_anything.build_sam._build_sam(**arch)`` builds."""
    from transformers import SamConfig, SamVisionConfig

    width = int(arch["encoder_embed_dim"])
    vision = SamVisionConfig(
        hidden_size=width,
        num_hidden_layers=int(arch["encoder_depth"]),
        num_attention_heads=int(arch["encoder_num_heads"]),
        mlp_dim=4 * width,
        global_attn_indexes=list(arch["encoder_global_attn_indexes"]),
    )
    return SamConfig(vision_config=vision.to_dict())
