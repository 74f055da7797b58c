"""The one converter from the reference port's (effdet 0.4.1) state dict to ours.

Mapping of key prefixes (``R`` repeat, ``N`` node, ``K`` input index, ``L`` level):

=================================================  ==========================================
effdet                                             scaledet
=================================================  ==========================================
``backbone.*``                                     ``network.backbone.*``
``fpn.resample.L.conv.{conv,bn}``                  ``network.fpn.extra.levels.i.{proj,norm}``
``fpn.cell.R.fnode.N.combine.edge_weights``        ``network.fpn.layers.R.nodes.N.fusion.weight``
``fpn.cell.R.fnode.N.combine.resample.K.conv.X``   ``network.fpn.layers.R.nodes.N.resample.j.X``
``fpn.cell.R.fnode.N.after_combine.conv.conv_dw``  ``...nodes.N.conv.depthwise`` (``conv_pw`` ->
                                                   ``pointwise``, ``bn`` -> ``...nodes.N.norm``)
``{class,box}_net.conv_rep.i.conv_{dw,pw}``        ``network.{class,box}_net.convs.i.{depthwise,pointwise}``
``{class,box}_net.bn_rep.i.L.bn``                  ``network.{class,box}_net.norms.i.L``
``{class,box}_net.predict.conv_{dw,pw}``           ``network.{class,box}_net.predict.{depthwise,pointwise}``
=================================================  ==========================================

``j`` is the position of input ``K`` in the node's input list (from the topology).
"""

from __future__ import annotations

import re

from torch import Tensor

from scaledet.weights import compare_state_dicts

from .config import EfficientDetVariant
from .feature_network import TOPOLOGIES

_SEPARABLE = {"conv_dw": "depthwise", "conv_pw": "pointwise"}
_RESAMPLE = {"conv": "proj", "bn": "norm"}


def is_effdet_state_dict(state_dict: dict[str, Tensor]) -> bool:
    """True if the keys look like the reference port's EfficientDet."""
    return any(k.startswith("fpn.cell.") for k in state_dict) and any(k.startswith("class_net.") for k in state_dict)


def _map_key(key: str, num_backbone_levels: int, topology) -> str | None:
    if key.startswith("backbone."):
        return "network." + key
    if m := re.fullmatch(r"fpn\.resample\.(\d+)\.conv\.(conv|bn)\.(\w+)", key):
        level_index, part, tail = int(m[1]), m[2], m[3]
        return f"network.fpn.extra.levels.{level_index - num_backbone_levels}.{_RESAMPLE[part]}.{tail}"
    if m := re.fullmatch(r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.(.+)", key):
        prefix, node, rest = f"network.fpn.layers.{m[1]}.nodes.{m[2]}", int(m[2]), m[3]
        if rest == "combine.edge_weights":
            return f"{prefix}.fusion.weight"
        if r := re.fullmatch(r"combine\.resample\.(\d+)\.conv\.(conv|bn)\.(\w+)", rest):
            if node >= len(topology) or int(r[1]) not in topology[node].inputs:
                return None
            position = topology[node].inputs.index(int(r[1]))
            return f"{prefix}.resample.{position}.{_RESAMPLE[r[2]]}.{r[3]}"
        if r := re.fullmatch(r"after_combine\.conv\.(conv_dw|conv_pw|bn)\.(\w+)", rest):
            return f"{prefix}.norm.{r[2]}" if r[1] == "bn" else f"{prefix}.conv.{_SEPARABLE[r[1]]}.{r[2]}"
        return None
    if m := re.fullmatch(r"(class_net|box_net)\.(conv_rep|predict)\.(?:(\d+)\.)?(conv_dw|conv_pw)\.(\w+)", key):
        where = "predict" if m[2] == "predict" else f"convs.{m[3]}"
        return f"network.{m[1]}.{where}.{_SEPARABLE[m[4]]}.{m[5]}"
    if m := re.fullmatch(r"(class_net|box_net)\.bn_rep\.(\d+)\.(\d+)\.bn\.(\w+)", key):
        return f"network.{m[1]}.norms.{m[2]}.{m[3]}.{m[4]}"
    return None


def convert_effdet_state_dict(state_dict: dict[str, Tensor], variant: EfficientDetVariant,
                              expected: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Rename an effdet ``EfficientDet`` state dict (``tf_efficientdet_*``) to our key names.

    Args:
        state_dict: the reference port's state dict.
        variant: the variant it belongs to (levels and topology decide some names).
        expected: our model's state dict; when given, the result must have exactly its keys and
            shapes (class predictor shapes excepted, so ``num_classes`` can differ).

    Raises:
        ValueError: keys that cannot be mapped, missing or unexpected keys, or shape mismatches,
            each listed.
    """
    topology = TOPOLOGIES[variant.feature_network](variant.min_level, variant.max_level)
    num_backbone_levels = 6 - variant.min_level  # backbone maps C_min .. C5
    converted, unknown = {}, []
    for key, value in state_dict.items():
        new_key = _map_key(key, num_backbone_levels, topology)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    problems = [f"unrecognised effdet keys: {unknown[:20]}"] if unknown else []
    if expected is not None:
        report = compare_state_dicts(converted, expected, any_shape=("network.class_net.predict.",))
        problems += [str(report)] if report else []
    if problems:
        raise ValueError("effdet checkpoint does not match this EfficientDet variant; " + "; ".join(problems))
    return converted
