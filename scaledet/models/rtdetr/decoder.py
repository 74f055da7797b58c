"""RT-DETR's decoder: IoU-aware query selection from the encoder's tokens, then decoder layers of
query self-attention and multi-scale deformable cross-attention with iterative box refinement.

Box formats: every box here is normalised ``(cx, cy, w, h)`` of the network input (which is the
whole original image, stretched: RT-DETR does not keep the aspect ratio and does not pad);
"unactivated" boxes are their logits (:func:`inverse_sigmoid`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from scaledet.models.deformable_attention import DeformableAttention, inverse_sigmoid
from scaledet.models.layers import MLP
from scaledet.models.rtdetr.backbone import ConvNormAct
from scaledet.models.rtdetr.encoder import FeedForward

#: size of the proposal anchors at the finest level, doubled per level (official ``grid_size``)
ANCHOR_SIZE = 0.05


class DecoderLayer(nn.Module):
    """Post-norm: self-attention over the queries (positions on queries and keys; ``attn_mask``
    keeps denoising groups apart), deformable cross-attention, ReLU FFN. [B, Q, C] -> [B, Q, C]."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, levels: int, points: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = DeformableAttention(dim, heads, levels, points)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, nn.ReLU, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor, boxes: Tensor, memory: Tensor, shapes: Sequence[tuple[int, int]],
                attn_mask: Tensor | None = None) -> Tensor:
        query = x + pos
        attended = self.self_attn(query, query, x, attn_mask=attn_mask, need_weights=False)[0]
        x = self.norm1(x + self.dropout(attended))
        x = self.norm2(x + self.dropout(self.cross_attn(x + pos, boxes[:, :, None], memory, shapes)))
        return self.norm3(x + self.dropout(self.ffn(x)))


def proposal_anchors(shapes: Sequence[tuple[int, int]], device: torch.device,
                     dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """One anchor per feature pixel: centre of the pixel, size ``ANCHOR_SIZE * 2**level``.

    Returns ``(anchor logits [1, S, 4]`` (``inverse_sigmoid`` of cxcywh; the float max where
    invalid), ``valid [1, S, 1]`` bool: every coordinate strictly inside (0.01, 0.99))``.
    """
    anchors = []
    for level, (height, width) in enumerate(shapes):
        ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                                torch.arange(width, device=device, dtype=dtype), indexing="ij")
        centers = torch.stack([(xs + 0.5) / width, (ys + 0.5) / height], -1).reshape(-1, 2)
        anchors.append(torch.cat([centers, torch.full_like(centers, ANCHOR_SIZE * 2.0 ** level)], -1))
    anchors = torch.cat(anchors)[None]
    valid = ((anchors > 0.01) & (anchors < 0.99)).all(-1, keepdim=True)
    logits = torch.log(anchors / (1 - anchors))
    return torch.where(valid, logits, torch.full_like(logits, torch.finfo(dtype).max)), valid


class Decoder(nn.Module):
    """Query selection and the decoder layers with their per-layer class and box heads.

    Args:
        in_channels: channels of the encoder levels (``encoder_dim`` each).
        dim / heads / ffn_dim / num_layers / points: decoder width, attention heads, FFN width,
            layers, sampling points per level per head.
        num_classes: K (sigmoid scores, no background class).
        num_queries: queries selected from the encoder tokens.
        num_denoising: denoising queries in training (0: no class embedding for them).
    """

    def __init__(self, in_channels: Sequence[int], dim: int, heads: int, ffn_dim: int, num_layers: int,
                 points: int, num_classes: int, num_queries: int, num_denoising: int, dropout: float = 0.0) -> None:
        super().__init__()
        levels = len(in_channels)
        self.num_queries = num_queries
        self.input_proj = nn.ModuleList(ConvNormAct(c, dim, 1) for c in in_channels)
        self.enc_output = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.enc_score_head = nn.Linear(dim, num_classes)
        self.enc_bbox_head = MLP(dim, dim, 4, 3)
        self.denoising_class_embed = (nn.Embedding(num_classes + 1, dim, padding_idx=num_classes)
                                      if num_denoising > 0 else None)
        self.query_pos_head = MLP(4, 2 * dim, dim, 2)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn_dim, levels, points, dropout)
                                    for _ in range(num_layers))
        self.class_heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(num_layers))
        self.box_heads = nn.ModuleList(MLP(dim, dim, 4, 3) for _ in range(num_layers))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation: class biases at prior 0.01, last box layers zero, Xavier
        on the proposal projection and the query position head."""
        prior = -math.log((1 - 0.01) / 0.01)
        for head in [self.enc_score_head, *self.class_heads]:
            nn.init.constant_(head.bias, prior)
        for head in [self.enc_bbox_head, *self.box_heads]:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        nn.init.xavier_uniform_(self.enc_output[0].weight)
        for layer in self.query_pos_head.layers:
            nn.init.xavier_uniform_(layer.weight)

    def flatten(self, features: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Encoder levels -> (memory [B, S, C], their (h, w) as Python ints)."""
        projected = [proj(feature) for proj, feature in zip(self.input_proj, features)]
        shapes = [(int(p.shape[2]), int(p.shape[3])) for p in projected]
        return torch.cat([p.flatten(2).transpose(1, 2) for p in projected], 1), shapes

    def select_queries(self, memory: Tensor, shapes: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        """IoU-aware query selection: score every token with the encoder heads, keep the top
        ``num_queries`` by best class logit.

        Returns ``dict(queries [B, Q, C]`` (detached token features), ``boxes [B, Q, 4]`` (their box
        logits, detached: the decoder's starting references), ``enc_logits [B, Q, K]``,
        ``enc_boxes [B, Q, 4]`` normalised cxcywh (for the encoder loss))``.
        """
        anchors, valid = proposal_anchors(shapes, memory.device, memory.dtype)
        tokens = self.enc_output(memory * valid.to(memory.dtype))
        logits = self.enc_score_head(tokens)  # [B, S, K]
        box_logits = self.enc_bbox_head(tokens) + anchors  # [B, S, 4]
        index = logits.max(-1).values.topk(self.num_queries, dim=1).indices  # [B, Q]

        def take(x: Tensor) -> Tensor:
            return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

        box_logits = take(box_logits)
        return {"queries": take(tokens).detach(), "boxes": box_logits.detach(), "enc_logits": take(logits),
                "enc_boxes": box_logits.sigmoid()}

    def forward(self, queries: Tensor, box_logits: Tensor, memory: Tensor, shapes: Sequence[tuple[int, int]],
                attn_mask: Tensor | None = None, all_layers: bool = False) -> tuple[Tensor, Tensor]:
        """queries [B, N, C], box_logits [B, N, 4] (starting references, unactivated), memory [B, S, C]
        -> (logits, boxes normalised cxcywh): ``[L, B, N, K]`` / ``[L, B, N, 4]`` for every layer when
        ``all_layers`` (training), else the last layer's ``[B, N, K]`` / ``[B, N, 4]``.

        Each layer refines its references: ``sigmoid(box_head(x) + logit(reference))``; the next
        layer starts from the detached result. With ``all_layers`` the box of layer i > 0 is
        computed from the previous layer's undetached box, as the official training code does
        (gradients flow through the refinement chain into the loss)."""
        reference = box_logits.sigmoid()
        previous = reference  # undetached previous box (training)
        logits, boxes = [], []
        x = queries
        for index, layer in enumerate(self.layers):
            x = layer(x, self.query_pos_head(reference), reference, memory, shapes, attn_mask)
            delta = self.box_heads[index](x)
            refined = (delta + inverse_sigmoid(reference)).sigmoid()
            if all_layers:
                boxes.append(refined if index == 0 else (delta + inverse_sigmoid(previous)).sigmoid())
                logits.append(self.class_heads[index](x))
            previous, reference = refined, refined.detach()
        if all_layers:
            return torch.stack(logits), torch.stack(boxes)
        return self.class_heads[-1](x), reference
