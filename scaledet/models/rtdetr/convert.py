"""Convert RT-DETR state dicts from Hugging Face and the official code to our key names.

Supported sources (detected from the key names):

* Hugging Face ``RTDetrForObjectDetection`` (the ``PekingU/rtdetr_*`` files): renamed, and the
  separate ``q_proj`` / ``k_proj`` / ``v_proj`` of the self-attention layers packed into
  ``nn.MultiheadAttention``'s ``in_proj`` (:func:`scaledet.models.detr.convert.pack_qkv`, shared
  with DETR); proven against transformers by ``tests/test_rtdetr_equivalence.py``, from its modules'
  ``state_dict()`` and from the file ``save_pretrained`` writes (the hub's layout: the AIFI layer as
  ``encoder.encoder.0``, feed-forwards as ``fc1`` / ``fc2`` without ``mlp.``).
* Hugging Face ``RTDetrV2ForObjectDetection`` (``PekingU/rtdetr_v2_*``) in its default decoder
  form (bilinear sampling, the same number of points on every level: then RT-DETRv2's network is
  RT-DETR's, the v2 changes being its training): the same names plus the top-level copies of the
  tied heads and the constant ``n_points_scale`` buffers, both dropped.
* the official ``lyuwenyu/RT-DETR`` ``rtdetr_pytorch`` layout (``backbone.res_layers.*``,
  ``encoder.encoder.0.layers.*``, ``decoder.dec_score_head.*``; its attention is already packed):
  renamed from the module names of the official source (``presnet.py``, ``hybrid_encoder.py``,
  ``rtdetr_decoder.py``); not yet checked against a released ``.pth`` file, whose weights sit
  under ``"ema" -> "module"`` (or ``"model"``) of the saved dict.

BatchNorm counters (``num_batches_tracked``) and the official decoder's cached ``anchors`` /
``valid_mask`` are dropped. Loading stays strict (:func:`scaledet.models.checkpoints.load_state_strict`).
"""

from __future__ import annotations

import re

from torch import Tensor

from scaledet.models.detr.convert import pack_qkv, rename_key, without_counters

_BLOCK_CONV = re.compile(r"^(backbone\.stages\.\d+\.\d+)\.layer\.(\d)\.")

_FROM_HF: list[tuple[str, str]] = [
    (r"^model\.backbone\.model\.embedder\.embedder\.", "backbone.stem."),
    (r"^model\.backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"backbone.stages.\1.\2."),
    (r"\.shortcut\.1\.", ".shortcut."),  # the average pool is index 0 in Hugging Face's shortcut
    (r"\.convolution\.", ".conv."),
    (r"\.normalization\.", ".norm."),
    (r"^model\.encoder_input_proj\.(\d+)\.0\.", r"encoder.input_proj.\1.conv."),
    (r"^model\.encoder_input_proj\.(\d+)\.1\.", r"encoder.input_proj.\1.norm."),
    (r"^model\.decoder_input_proj\.(\d+)\.0\.", r"decoder.input_proj.\1.conv."),
    (r"^model\.decoder_input_proj\.(\d+)\.1\.", r"decoder.input_proj.\1.norm."),
    # the AIFI layer: ``aifi`` in transformers' modules, ``encoder.encoder`` in the files they save
    # (the hub's ``PekingU/rtdetr_*`` too), whose feed-forward is ``fc1`` / ``fc2`` without ``mlp.``
    (r"^model\.encoder\.(?:aifi|encoder)\.0\.layers\.(\d+)\.final_layer_norm\.", r"encoder.aifi.\1.norm2."),
    (r"^model\.encoder\.(?:aifi|encoder)\.0\.layers\.(\d+)\.", r"encoder.aifi.\1."),
    (r"^model\.encoder\.", "encoder."),
    (r"^model\.(enc_output|enc_score_head|enc_bbox_head|denoising_class_embed)\.", r"decoder.\1."),
    (r"^model\.decoder\.class_embed\.", "decoder.class_heads."),
    (r"^model\.decoder\.bbox_embed\.", "decoder.box_heads."),
    (r"^model\.decoder\.", "decoder."),
    (r"\.o_proj\.", ".out_proj."),
    (r"\.self_attn_layer_norm\.", ".norm1."),
    (r"\.encoder_attn_layer_norm\.", ".norm2."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"^(decoder\.layers\.\d+)\.final_layer_norm\.", r"\1.norm3."),
    (r"(?:\.mlp)?\.fc([12])\.", r".ffn.linear\1."),
]


_FROM_OFFICIAL: list[tuple[str, str]] = [
    (r"^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.", r"backbone.stages.\1.\2."),
    (r"\.branch2a\.", ".conv1."),
    (r"\.branch2b\.", ".conv2."),
    (r"\.branch2c\.", ".conv3."),
    (r"\.short\.conv\.(conv|norm)\.", r".shortcut.\1."),  # stride 2: pool, then a ConvNormLayer named conv
    (r"\.short\.", ".shortcut."),
    (r"^encoder\.input_proj\.(\d+)\.0\.", r"encoder.input_proj.\1.conv."),
    (r"^encoder\.input_proj\.(\d+)\.1\.", r"encoder.input_proj.\1.norm."),
    (r"^encoder\.encoder\.0\.layers\.(\d+)\.", r"encoder.aifi.\1."),
    (r"^decoder\.decoder\.layers\.", "decoder.layers."),
    (r"\.(linear[12])\.", r".ffn.\1."),
    (r"^decoder\.dec_score_head\.", "decoder.class_heads."),
    (r"^decoder\.dec_bbox_head\.", "decoder.box_heads."),
]
_OFFICIAL_STEM = re.compile(r"^backbone\.conv1\.conv1_(\d)\.")
_OFFICIAL_DROPPED = ("decoder.anchors", "decoder.valid_mask")


def from_official(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official ``rtdetr_pytorch`` state dict -> our key names (tensors unchanged)."""
    converted = {}
    for key, value in without_counters(state_dict).items():
        if key in _OFFICIAL_DROPPED:
            continue
        key = _OFFICIAL_STEM.sub(lambda m: f"backbone.stem.{int(m[1]) - 1}.", key)
        converted[rename_key(key, _FROM_OFFICIAL)] = value
    return converted


#: Hugging Face RT-DETRv2 extras: tied copies of the decoder heads, constant 1 / points buffers
_HF_V2_EXTRAS = re.compile(r"^(bbox_embed|class_embed)\.|\.n_points_scale$")


def _rename(key: str) -> str:
    key = rename_key(key, _FROM_HF)
    # backbone block convolutions: Hugging Face's layer.0/1/2 are our conv1/conv2/conv3
    return _BLOCK_CONV.sub(lambda m: f"{m[1]}.conv{int(m[2]) + 1}.", key)


def detect_format(state_dict: dict[str, Tensor]) -> str:
    """``"scaledet"``, ``"official"`` or ``"hf"`` from the key names; ValueError otherwise."""
    keys = list(state_dict)
    if any(key.startswith("backbone.stem.") for key in keys):
        return "scaledet"
    if any(key.startswith(("backbone.res_layers.", "decoder.decoder.layers.")) for key in keys):
        return "official"
    if any(key.startswith(("model.backbone.model.embedder.", "model.decoder.layers.")) for key in keys):
        return "hf"
    raise ValueError(f"not an RT-DETR checkpoint (official, Hugging Face or scaledet); first keys: {keys[:5]}")


def from_hf(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``RTDetrForObjectDetection`` / ``RTDetrV2ForObjectDetection`` state dict -> our key names."""
    kept = {key: value for key, value in without_counters(state_dict).items() if not _HF_V2_EXTRAS.search(key)}
    return pack_qkv({_rename(key): value for key, value in kept.items()})


def to_scaledet(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Any supported RT-DETR state dict -> our key names (ours: unchanged)."""
    converters = {"scaledet": dict, "official": from_official, "hf": from_hf}
    return converters[detect_format(state_dict)](state_dict)
