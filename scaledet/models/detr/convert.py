"""Convert DETR checkpoints from the official repository and Hugging Face to our layout (and back).

Supported sources (detected from the key names):

* official facebookresearch/detr: ``backbone.0.body.*``, ``transformer.encoder.layers.i.*`` with a
  packed ``self_attn.in_proj_weight`` [3C,C], ``class_embed``, ``bbox_embed`` (the ``.pth`` files hold
  this under ``"model"``; :func:`scaledet.weights.load_checkpoint` unwraps it);
* Hugging Face ``DetrForObjectDetection``: published hub names (``model.backbone.conv_encoder.model.*``,
  ``out_proj``, ``fc1``) and transformers 5.x names (``model.backbone.model.*``, ``o_proj``,
  ``mlp.fc1``), with attention split into ``q_proj``/``k_proj``/``v_proj``.

:func:`to_scaledet` renames only; loading is strict
(:func:`scaledet.models.checkpoints.load_state_strict` names every missing, unexpected or
mis-shaped key). ``num_batches_tracked`` counters of the official and Hugging Face files (no
meaning for frozen BatchNorm) are the only keys dropped silently; our own files keep theirs.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

Rules = list[tuple[str, str]]

_FROM_OFFICIAL: Rules = [
    (r"^backbone\.0\.body\.", "backbone.body."),
    (r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.", r"transformer.\1.\2."),
    (r"^transformer\.decoder\.norm\.", "transformer.decoder_norm."),
    (r"\.multihead_attn\.", ".cross_attn."),
    (r"\.(linear[12])\.", r".ffn.\1."),
    (r"^class_embed\.", "class_head."),
    (r"^bbox_embed\.", "box_head."),
]

_TO_OFFICIAL: Rules = [
    (r"^backbone\.body\.", "backbone.0.body."),
    (r"^transformer\.(encoder|decoder)\.(\d+)\.", r"transformer.\1.layers.\2."),
    (r"^transformer\.decoder_norm\.", "transformer.decoder.norm."),
    (r"\.cross_attn\.", ".multihead_attn."),
    (r"\.ffn\.(linear[12])\.", r".\1."),
    (r"^class_head\.", "class_embed."),
    (r"^box_head\.", "bbox_embed."),
]

#: transformers' names inside an encoder / decoder layer -> ours (DETR and Deformable DETR), applied
#: after each family's own rules have moved the layer to ``transformer.{encoder,decoder}.N``
HF_LAYER_RULES: Rules = [
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.(out_proj|o_proj)\.", ".out_proj."),
    (r"\.(mlp\.)?fc([12])\.", r".ffn.linear\2."),
    (r"\.self_attn_layer_norm\.", ".norm1."),
    (r"\.encoder_attn_layer_norm\.", ".norm2."),
    (r"^(transformer\.encoder\.\d+)\.final_layer_norm\.", r"\1.norm2."),
    (r"^(transformer\.decoder\.\d+)\.final_layer_norm\.", r"\1.norm3."),
]

_FROM_HF: Rules = [
    (r"^model\.backbone\.(conv_encoder\.)?model\.", "backbone.body."),
    (r"^model\.input_projection\.", "input_proj."),
    (r"^model\.query_position_embeddings\.", "query_embed."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.", r"transformer.\1.\2."),
    (r"^model\.decoder\.layernorm\.", "transformer.decoder_norm."),
    (r"^class_labels_classifier\.", "class_head."),
    (r"^bbox_predictor\.", "box_head."),
    *HF_LAYER_RULES,
]

_QKV = re.compile(r"^(?P<prefix>.*\.(self_attn|cross_attn))\.(?P<part>[qkv])_proj\.(?P<kind>weight|bias)$")


def detect_format(state_dict: dict[str, Tensor]) -> str:
    """``"scaledet"``, ``"official"`` or ``"hf"`` from the key names; ValueError otherwise."""
    keys = list(state_dict)
    if any(key.startswith("backbone.body.") for key in keys):
        return "scaledet"
    if any(key.startswith(("backbone.0.body.", "transformer.encoder.layers.")) for key in keys):
        return "official"
    if any(key.startswith(("model.backbone.", "model.encoder.layers.", "class_labels_classifier.")) for key in keys):
        return "hf"
    raise ValueError(f"not a DETR checkpoint (official, Hugging Face or scaledet); first keys: {keys[:5]}")


def rename_key(key: str, rules: Rules) -> str:
    """``key`` after every ``(pattern, replacement)`` regex substitution of ``rules``, in order."""
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def without_counters(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` without BatchNorm's ``num_batches_tracked`` counters."""
    return {key: value for key, value in state_dict.items() if not key.endswith("num_batches_tracked")}


def from_official(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official facebookresearch/detr state dict -> our key names (tensors unchanged)."""
    return {rename_key(key, _FROM_OFFICIAL): value for key, value in without_counters(state_dict).items()}


def to_official(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict -> the official facebookresearch/detr key names."""
    return {rename_key(key, _TO_OFFICIAL): value for key, value in state_dict.items()}


def pack_qkv(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Merge ``{q,k,v}_proj.{weight,bias}`` into ``in_proj_{weight,bias}`` (rows q, k, v)."""
    packed: dict[str, Tensor] = {}
    parts: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        match = _QKV.match(key)
        if match is None:
            packed[key] = value
        else:
            parts.setdefault(f"{match['prefix']}.in_proj_{match['kind']}", {})[match["part"]] = value
    for key, pieces in parts.items():
        if set(pieces) != {"q", "k", "v"}:
            raise ValueError(f"{key}: expected q_proj, k_proj and v_proj, found only {sorted(pieces)}")
        packed[key] = torch.cat([pieces["q"], pieces["k"], pieces["v"]])
    return packed


def from_hf(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``DetrForObjectDetection`` state dict (hub or transformers 5.x names) -> ours."""
    renamed = {rename_key(key, _FROM_HF): value for key, value in without_counters(state_dict).items()}
    return pack_qkv(renamed)


def to_scaledet(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Any supported DETR state dict -> our key names (ours: unchanged)."""
    converters = {"scaledet": dict, "official": from_official, "hf": from_hf}
    return converters[detect_format(state_dict)](state_dict)

