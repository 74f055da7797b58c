"""Convert transformers' ``DeformableDetrForObjectDetection`` state dicts to our layout.

Supported source: Hugging Face names, transformers 5.x (``model.backbone.model.*``, ``o_proj``,
``mlp.fc1``) and the published hub files (``model.backbone.conv_encoder.model.*``, ``out_proj``,
``fc1``), decoder self-attention split into ``q_proj`` / ``k_proj`` / ``v_proj`` (packed into
``in_proj`` here, as DETR's converter does).

Heads: transformers stores one ``class_embed.i`` / ``bbox_embed.i`` per decoder layer (plus one for
the encoder proposals in two-stage models) and copies under ``model.decoder.*``. Our plain model
has one shared head; the copies of the others must then equal head 0 (else the file is a
box-refinement checkpoint and loading it into a plain model would be wrong: ValueError), and a
box-refinement model refuses a plain model's file (its heads all one shared head, no decoder
copies). The ``model.decoder.*`` copies are dropped.

:func:`to_scaledet` renames only; loading is strict (:func:`scaledet.models.checkpoints.load_state_strict`).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from scaledet.models.detr.convert import HF_LAYER_RULES, Rules, pack_qkv, rename_key, without_counters

_FROM_HF: Rules = [
    (r"^model\.backbone\.(conv_encoder\.)?model\.", "backbone.body."),
    (r"^model\.input_proj\.", "input_proj."),
    (r"^model\.query_position_embeddings\.", "query_embed."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.", r"transformer.\1.\2."),
    (r"^model\.(level_embed|reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)\b",
     r"transformer.\1"),
    (r"^class_embed\.", "class_heads."),
    (r"^bbox_embed\.", "box_heads."),
    *HF_LAYER_RULES,
]

#: transformers' tied copies of the detection heads
_DECODER_HEAD_COPIES = re.compile(r"^model\.decoder\.(class_embed|bbox_embed)\.")
_HEAD = re.compile(r"^(?P<kind>class_heads|box_heads)\.(?P<index>\d+)\.(?P<rest>.*)$")


def detect_format(state_dict: dict[str, Tensor]) -> str:
    """``"scaledet"`` or ``"hf"`` from the key names; ValueError otherwise."""
    keys = list(state_dict)
    if any(key.startswith("transformer.level_embed") for key in keys):
        return "scaledet"
    if any(key.startswith("model.encoder.layers.") and ".sampling_offsets." in key for key in keys):
        return "hf"
    raise ValueError(f"not a Deformable DETR checkpoint (Hugging Face or scaledet); first keys: {keys[:5]}")


def _shared_heads(state_dict: dict[str, Tensor], num_heads: int) -> dict[str, Tensor]:
    """Keep heads ``0..num_heads-1``; with a single shared head (plain model), every other head of the
    file must equal head 0 (the file's per-layer copies)."""
    kept = {}
    for key, value in state_dict.items():
        match = _HEAD.match(key)
        if match is None or int(match["index"]) < num_heads:
            kept[key] = value
            continue
        first = state_dict.get(f"{match['kind']}.0.{match['rest']}")
        if num_heads != 1 or first is None or not torch.equal(first, value):
            raise ValueError(f"{key} differs from head 0: the file has one head per decoder layer (box "
                             "refinement or two-stage); load it into deformable_detr_r50_box_refine or _two_stage")
    return kept


def _check_not_plain(state_dict: dict[str, Tensor]) -> None:
    """For a box-refinement model: ValueError if the Hugging Face file is a plain model's, i.e. it has
    no ``model.decoder.bbox_embed`` copies (transformers ties them only with box refinement) and its
    per-layer heads are all equal to head 0 (the plain model repeats one shared head)."""
    if any(key.startswith("model.decoder.bbox_embed.") for key in state_dict):
        return
    heads = {}
    for key, value in state_dict.items():
        match = re.match(r"^(class_embed|bbox_embed)\.(\d+)\.(.*)$", key)
        if match:
            heads.setdefault((match[1], match[3]), []).append(value)
    if heads and all(len(values) > 1 and all(torch.equal(values[0], v) for v in values[1:])
                     for values in heads.values()):
        raise ValueError("the file's per-layer heads are all one shared head and it has no decoder box-refinement "
                         "heads: it is a plain Deformable DETR checkpoint; load it into deformable_detr_r50")


def from_hf(state_dict: dict[str, Tensor], num_heads: int) -> dict[str, Tensor]:
    """transformers ``DeformableDetrForObjectDetection`` state dict -> ours, for a model with
    ``num_heads`` class / box heads (1 plain; decoder layers with refinement; + 1 two-stage).
    ValueError if the file's heads do not fit: per-layer heads into a plain model, or a plain
    model's repeated shared head into a box-refinement model (:func:`_check_not_plain`)."""
    if num_heads > 1:
        _check_not_plain(state_dict)
    renamed = {rename_key(key, _FROM_HF): value for key, value in without_counters(state_dict).items()
               if not _DECODER_HEAD_COPIES.match(key)}
    return _shared_heads(pack_qkv(renamed), num_heads)


def to_scaledet(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Any supported Deformable DETR state dict -> our key names for ``model`` (ours: unchanged;
    ``model`` may be on the meta device: only its head count is read)."""
    if detect_format(state_dict) == "scaledet":
        return dict(state_dict)
    return from_hf(state_dict, len(model.class_heads))
