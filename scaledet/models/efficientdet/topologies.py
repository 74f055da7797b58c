"""The EfficientDet paper's alternative feature networks (Table 5), as topology data.

Every function here returns a :data:`~.feature_network.Topology` (a tuple of
:class:`~.feature_network.NodeSpec`) built from the same blocks as BiFPN
(:class:`~.feature_network.Resample`, the fusions, :class:`~.feature_network.FeatureNode`); importing
this module registers them in :data:`~.feature_network.TOPOLOGIES`, so any EfficientDet variant
takes them by name: ``create_model("efficientdet_d0", feature_network="fpn")``.

Entry indexing (as in :mod:`.feature_network`): entries ``0 .. L-1`` are a layer's inputs at
levels ``min_level .. max_level``; node ``n`` appends entry ``L + n``; a layer outputs, per
level, the last entry at that level (a level without a node passes its input through).

* ``"fpn"`` - repeated top-down FPN (Lin et al. 2017; paper Figure 2a): P_l = node(P_l, P_{l+1})
  for l = max-1 .. min; P_max passes through.
* ``"panet"`` - FPN + PANet (Liu et al. 2018; Figure 2b): the top-down pass, then a bottom-up pass
  N_l = node(latest P_l, N_{l-1}) for l = min+1 .. max.
* ``"nasfpn"`` - the published NAS-FPN cell (Ghiasi et al. 2019; Figure 2c), see
  :func:`nasfpn_topology`.
* ``"fcfpn"`` - fully-connected FPN, our reading of the paper's variant, see :func:`fcfpn_topology`.
* ``"bifpn"`` (defined in :mod:`.feature_network`) with ``fusion="sum"``, ``"softmax"`` or ``"fast"``
  gives the remaining rows of Table 5 and Table 6.

One generalisation of the blocks was needed: NAS-FPN's *global attention* merge, added here as
the fusion :class:`GlobalAttentionFusion` (key ``"attention"`` in
:data:`~.feature_network.FUSION_MODULES`), chosen per node through ``NodeSpec.fusion``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .feature_network import FUSION_MODULES, TOPOLOGIES, NodeSpec, Topology


class GlobalAttentionFusion(nn.Module):
    """NAS-FPN's global-attention merge: ``x0 + x1 * sigmoid(max_{h,w} x0) + sum_{i>=2} x_i``.

    ``x0`` is the input that came from the coarser level (the topology orders it first); the
    per-channel max over its spatial positions gates ``x1``. Further inputs are added unweighted
    (NAS-FPN adds an output node's still-unused same-level inputs this way). No parameters.
    All inputs ``[B, C, H, W]``, already resampled to the node's level.
    """

    def __init__(self, num_inputs: int) -> None:
        super().__init__()
        if num_inputs < 2:
            raise ValueError(f"global attention fusion needs at least 2 inputs, got {num_inputs}")

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        gate = torch.sigmoid(inputs[0].amax(dim=(-2, -1), keepdim=True))
        out = inputs[0] + inputs[1] * gate
        for x in inputs[2:]:
            out = out + x
        return out


FUSION_MODULES.setdefault("attention", GlobalAttentionFusion)


def _check_levels(min_level: int, max_level: int) -> None:
    if max_level <= min_level:
        raise ValueError(f"need max_level > min_level, got {min_level}..{max_level}")


def fpn_topology(min_level: int = 3, max_level: int = 7) -> Topology:
    """Repeated top-down FPN: nodes at levels max-1 .. min, node l fuses [latest P_l, latest P_{l+1}]."""
    _check_levels(min_level, max_level)
    return tuple(_top_down(min_level, max_level)[0])


def _top_down(min_level: int, max_level: int) -> tuple[list[NodeSpec], dict[int, int]]:
    """The top-down pass and the latest entry index per level after it."""
    num_levels = max_level - min_level + 1
    latest = {level: i for i, level in enumerate(range(min_level, max_level + 1))}
    nodes: list[NodeSpec] = []
    for level in range(max_level - 1, min_level - 1, -1):
        nodes.append(NodeSpec(level, (latest[level], latest[level + 1])))
        latest[level] = num_levels + len(nodes) - 1
    return nodes, latest


def panet_topology(min_level: int = 3, max_level: int = 7) -> Topology:
    """FPN + PANet: the top-down pass, then bottom-up nodes at min+1 .. max fusing
    [latest P_l, latest P_{l-1}] (no skip from the layer input, unlike BiFPN)."""
    _check_levels(min_level, max_level)
    nodes, latest = _top_down(min_level, max_level)
    num_levels = max_level - min_level + 1
    for level in range(min_level + 1, max_level + 1):
        nodes.append(NodeSpec(level, (latest[level], latest[level - 1])))
        latest[level] = num_levels + len(nodes) - 1
    return tuple(nodes)


#: The NAS-FPN cell found by architecture search (Ghiasi, Lin, Pang, Le, "NAS-FPN", CVPR 2019,
#: Figure 6), as published in TensorFlow Model Garden's ``NASFPN_BLOCK_SPECS``
#: (``official/vision/modeling/decoders/nasfpn.py``): (level, merge op, (input a, input b),
#: is_output) for levels 3..7, entries 0..4 = P3..P7, block n appends entry 5 + n.
NASFPN_CELL: tuple[tuple[int, str, tuple[int, int], bool], ...] = (
    (4, "attention", (1, 3), False),
    (4, "sum", (1, 5), False),
    (3, "sum", (0, 6), True),
    (4, "sum", (6, 7), True),
    (5, "attention", (7, 8), True),
    (7, "attention", (6, 9), True),
    (6, "attention", (9, 10), True),
)


def nasfpn_topology(min_level: int = 3, max_level: int = 7) -> Topology:
    """The published NAS-FPN cell (:data:`NASFPN_CELL`) as nodes with per-node fusion.

    Follows the reference semantics: an ``"attention"`` merge gates the finer input by the
    coarser one (:class:`GlobalAttentionFusion`, coarser input first); an output block also adds
    every entry at its level that no block has used yet (in the 3..7 cell: input P5 into the P5
    output, input P7 into the P7 output). Defined for 5 levels; other ranges shift the cell's
    levels by ``min_level - 3``. Each node then runs our shared activation -> separable conv -> BN
    (the paper's Table 5 uses separable convolutions in every feature network).
    """
    _check_levels(min_level, max_level)
    num_levels = max_level - min_level + 1
    if num_levels != 5:
        raise ValueError(f"the NAS-FPN cell is defined for 5 levels, got {min_level}..{max_level}")
    shift = min_level - 3
    entry_levels = list(range(min_level, max_level + 1))
    used = [False] * num_levels
    nodes: list[NodeSpec] = []
    for level, op, (a, b), is_output in NASFPN_CELL:
        level += shift
        used[a] = used[b] = True
        if op == "attention" and entry_levels[a] < entry_levels[b]:
            a, b = b, a  # the coarser input gates the finer one
        inputs = [a, b]
        if is_output:
            extra = [i for i, lv in enumerate(entry_levels) if lv == level and not used[i]]
            for i in extra:
                used[i] = True
            inputs += extra
        nodes.append(NodeSpec(level, tuple(inputs), op))
        entry_levels.append(level)
        used.append(False)
    return tuple(nodes)


def fcfpn_topology(min_level: int = 3, max_level: int = 7) -> Topology:
    """Fully-connected FPN: our interpretation of the paper's variant (arXiv v1, Figure 2e).

    The paper draws it without a definition. We keep PANet's node positions (a top-down column
    at levels max-1 .. min, then a bottom-up column at min+1 .. max) and connect each node to
    *every* feature of the previous column plus the previous node of its own pass:

    * top-down node l: all L layer inputs + the top-down node at l+1 (if any);
    * bottom-up node l: the latest feature of every level after the top-down pass + the
      bottom-up node at l-1 (if any).

    Inputs from other levels are resampled by the shared :class:`~.feature_network.Resample`.
    """
    _check_levels(min_level, max_level)
    num_levels = max_level - min_level + 1
    layer_inputs = list(range(num_levels))
    nodes: list[NodeSpec] = []
    latest = {level: i for i, level in enumerate(range(min_level, max_level + 1))}
    previous: int | None = None
    for level in range(max_level - 1, min_level - 1, -1):
        inputs = layer_inputs + ([previous] if previous is not None else [])
        nodes.append(NodeSpec(level, tuple(inputs)))
        previous = latest[level] = num_levels + len(nodes) - 1
    column = [latest[level] for level in range(min_level, max_level + 1)]
    previous = None
    for level in range(min_level + 1, max_level + 1):
        inputs = column + ([previous] if previous is not None and previous not in column else [])
        nodes.append(NodeSpec(level, tuple(inputs)))
        previous = num_levels + len(nodes) - 1
    return tuple(nodes)


_NEW = {"fpn": fpn_topology, "panet": panet_topology, "nasfpn": nasfpn_topology, "fcfpn": fcfpn_topology}
for _name, _function in _NEW.items():
    TOPOLOGIES.setdefault(_name, _function)
