"""Deformable DETR's encoder and decoder layers (Zhu et al. 2021), batch-first.

Shapes: ``B`` batch, ``C`` channels, ``S`` the flattened pyramid (sum of ``H_l * W_l`` over the
``L`` levels, levels concatenated coarse-last), ``Q`` queries, ``M`` heads, ``P`` sampling points.
Padding masks are bool, True on padding. Reference points are normalised to [0, 1] over the
padded feature maps: ``(x, y)`` points (encoder, plain decoder) or ``(cx, cy, w, h)`` boxes
(refined decoder).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from scaledet.models.deformable_attention import DeformableAttention, inverse_sigmoid
from scaledet.models.deformable_detr.backbone import CenteredSinePositionEncoding
from scaledet.models.detr.transformer import FeedForward


class EncoderLayer(nn.Module):
    """Deformable self-attention over the pyramid (positions added to the queries only), then FFN; post-norm."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, num_levels: int,
                 num_points: int) -> None:
        super().__init__()
        self.self_attn = DeformableAttention(dim, num_heads, num_levels, num_points)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor,
                spatial_shapes: Sequence[tuple[int, int]], padding_mask: Tensor) -> Tensor:
        """src, pos [B,S,C]; reference_points [B,S,L,2]; padding_mask [B,S] -> [B,S,C]."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        src = self.norm1(src + self.dropout1(attended))
        return self.norm2(src + self.dropout2(self.ffn(src)))


class DecoderLayer(nn.Module):
    """Query self-attention (standard), deformable cross-attention to the encoder memory, FFN; post-norm."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, num_levels: int,
                 num_points: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = DeformableAttention(dim, num_heads, num_levels, num_points)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor,
                spatial_shapes: Sequence[tuple[int, int]], padding_mask: Tensor) -> Tensor:
        """tgt, query_pos [B,Q,C]; reference_points [B,Q,L,2 or 4]; memory [B,S,C]; padding_mask [B,S] -> [B,Q,C]."""
        query = tgt + query_pos
        attended = self.self_attn(query, query, tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attended))
        attended = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, padding_mask)
        tgt = self.norm2(tgt + self.dropout2(attended))
        return self.norm3(tgt + self.dropout3(self.ffn(tgt)))


def encoder_reference_points(spatial_shapes: Sequence[tuple[int, int]], valid_ratios: Tensor) -> Tensor:
    """Pixel centres of every level as encoder reference points.

    Args:
        spatial_shapes: [(H_l, W_l)] of the L levels.
        valid_ratios: [B, L, 2] (w, h) share of each level that is not padding.

    Returns:
        [B, S, L, 2] (x, y): each pixel's centre, normalised by its level's valid size, then mapped
        onto every level's padded map (times that level's valid ratio).
    """
    points = []
    for level, (height, width) in enumerate(spatial_shapes):
        # arange + 0.5 equals linspace(0.5, n - 0.5, n) exactly, and stays symbolic under torch.export
        ys = torch.arange(height, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5
        xs = torch.arange(width, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        y = grid_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
        x = grid_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
        points.append(torch.stack((x, y), -1))
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]


class DeformableTransformer(nn.Module):
    """Encoder over the flattened pyramid, query initialisation (learned, or the encoder's top-scoring
    proposals in two-stage mode) and the decoder with optional iterative box refinement.

    The class and box heads live in the detector (one per decoder layer with refinement, plus the
    encoder's proposal head in two-stage mode); :meth:`forward` receives them.

    Args:
        dim, num_heads, ffn_dim, enc_layers, dec_layers, dropout: transformer sizes.
        num_levels: pyramid levels; enc_points / dec_points: sampling points per head and level.
        two_stage: queries from encoder proposals (top ``num_queries`` by the proposal head's first logit).
        num_queries: proposals kept in two-stage mode (the learned queries are the detector's otherwise).
    """

    def __init__(self, dim: int = 256, num_heads: int = 8, ffn_dim: int = 1024, enc_layers: int = 6,
                 dec_layers: int = 6, dropout: float = 0.1, num_levels: int = 4, enc_points: int = 4,
                 dec_points: int = 4, two_stage: bool = False, num_queries: int = 300) -> None:
        super().__init__()
        self.dim, self.two_stage, self.num_queries = dim, two_stage, num_queries
        self.encoder = nn.ModuleList(EncoderLayer(dim, num_heads, ffn_dim, dropout, num_levels, enc_points)
                                     for _ in range(enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(dim, num_heads, ffn_dim, dropout, num_levels, dec_points)
                                     for _ in range(dec_layers))
        self.level_embed = nn.Parameter(torch.empty(num_levels, dim))
        if two_stage:
            self.enc_output = nn.Linear(dim, dim)
            self.enc_output_norm = nn.LayerNorm(dim)
            self.pos_trans = nn.Linear(2 * dim, 2 * dim)
            self.pos_trans_norm = nn.LayerNorm(2 * dim)
            self.box_encoding = CenteredSinePositionEncoding(dim // 2)  # no parameters
        else:
            self.reference_points = nn.Linear(dim, 2)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation: Xavier everywhere, then the deformable attention's own,
        Xavier reference-point projection with zero bias, normal level embeddings."""
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        for module in self.modules():
            if isinstance(module, DeformableAttention):
                module.reset_parameters()
        if not self.two_stage:
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def encode(self, sources: list[Tensor], masks: list[Tensor], positions: list[Tensor]) -> tuple[Tensor, ...]:
        """Per level sources, positions [B,C,H_l,W_l] and masks [B,H_l,W_l] ->
        (memory [B,S,C], padding_mask [B,S], valid_ratios [B,L,2] (w, h))."""
        shapes = [tuple(source.shape[-2:]) for source in sources]
        src = torch.cat([source.flatten(2).transpose(1, 2) for source in sources], 1)
        pos = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
                         for level, p in enumerate(positions)], 1)
        padding = torch.cat([mask.flatten(1) for mask in masks], 1)
        valid_ratios = torch.stack([valid_ratio(mask, src.dtype) for mask in masks], 1)
        reference = encoder_reference_points(shapes, valid_ratios)
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos, reference, shapes, padding)
        return memory, padding, valid_ratios

    def proposals(self, memory: Tensor, masks: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Two-stage: one proposal per encoder pixel. memory [B,S,C], per-level masks ->
        (object queries [B,S,C], proposal boxes [B,S,4] as inverse-sigmoid cxcywh, +inf where
        the pixel is padding or the box leaves (0.01, 0.99))."""
        boxes = []
        for level, mask in enumerate(masks):
            batch, height, width = mask.shape
            valid_h = (~mask[:, :, 0]).sum(1).to(memory.dtype)
            valid_w = (~mask[:, 0, :]).sum(1).to(memory.dtype)
            ys = torch.arange(height, dtype=memory.dtype, device=memory.device)
            xs = torch.arange(width, dtype=memory.dtype, device=memory.device)
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            grid = torch.stack([grid_x, grid_y], -1)  # [H,W,2] (x, y)
            scale = torch.stack([valid_w, valid_h], -1).view(batch, 1, 1, 2)
            centres = (grid.unsqueeze(0) + 0.5) / scale
            sizes = torch.full_like(centres, 0.05 * (2.0 ** level))
            boxes.append(torch.cat((centres, sizes), -1).view(batch, -1, 4))
        boxes = torch.cat(boxes, 1)
        padding = torch.cat([mask.flatten(1) for mask in masks], 1)[..., None]
        valid = ((boxes > 0.01) & (boxes < 0.99)).all(-1, keepdim=True)
        boxes = torch.log(boxes / (1 - boxes)).masked_fill(padding | ~valid, float("inf"))
        queries = memory.masked_fill(padding | ~valid, 0.0)
        return self.enc_output_norm(self.enc_output(queries)), boxes

    def forward(self, sources: list[Tensor], masks: list[Tensor], positions: list[Tensor],
                query_embed: Tensor | None, class_heads: Sequence[nn.Module], box_heads: Sequence[nn.Module],
                box_refine: bool) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """Run encoder and decoder.

        Args:
            sources, positions: per level [B,C,H_l,W_l] (projected features, sine positions);
                masks: per level [B,H_l,W_l] bool, True on padding.
            query_embed: [Q, 2C] learned (position, content) queries; ``None`` in two-stage mode.
            class_heads / box_heads: ``C -> K`` logits / ``C -> 4`` box deltas; with ``box_refine``
                entry ``l`` serves decoder layer ``l``, else entry 0 serves all; in two-stage mode the
                last entry scores the encoder's proposals.

        Returns:
            ``(hidden [L,B,Q,C], boxes [L,B,Q,4] normalised cxcywh, proposals)`` with ``proposals``
            ``(logits [B,S,K], boxes [B,S,4])`` of every encoder pixel in two-stage mode, else ``()``.
        """
        memory, padding, valid_ratios = self.encode(sources, masks, positions)
        shapes = [tuple(source.shape[-2:]) for source in sources]
        batch = memory.shape[0]
        proposals: tuple[Tensor, ...] = ()
        if self.two_stage:
            object_queries, anchors = self.proposals(memory, masks)
            proposal_logits = class_heads[-1](object_queries)
            proposal_boxes = box_heads[-1](object_queries) + anchors  # inverse-sigmoid cxcywh
            count = min(self.num_queries, proposal_logits.shape[1])
            top = torch.topk(proposal_logits[..., 0], count, dim=1)[1]
            top_boxes = torch.gather(proposal_boxes, 1, top.unsqueeze(-1).expand(-1, -1, 4)).detach()
            reference = top_boxes.sigmoid()
            embedded = self.pos_trans_norm(self.pos_trans(self.box_encoding.encode_boxes(reference)))
            query_pos, tgt = torch.split(embedded, self.dim, dim=2)
            proposals = (proposal_logits, proposal_boxes.sigmoid())
        else:
            query_pos, tgt = torch.split(query_embed, self.dim, dim=1)
            query_pos = query_pos.unsqueeze(0).expand(batch, -1, -1)
            tgt = tgt.unsqueeze(0).expand(batch, -1, -1)
            reference = self.reference_points(query_pos).sigmoid()  # [B,Q,2]
        hidden, boxes = [], []
        # computed once per reference: the same inverse_sigmoid twice in the graph (plain model) made
        # the ONNX exporter's optimiser drop a node another one still read (invalid model)
        reference_logit = inverse_sigmoid(reference)
        for index, layer in enumerate(self.decoder):
            ratios = valid_ratios if reference.shape[-1] == 2 else torch.cat([valid_ratios, valid_ratios], -1)
            tgt = layer(tgt, query_pos, reference[:, :, None] * ratios[:, None], memory, shapes, padding)
            delta = box_heads[index if box_refine else 0](tgt)
            if reference.shape[-1] == 4:
                layer_boxes = (delta + reference_logit).sigmoid()
            else:
                layer_boxes = torch.cat([delta[..., :2] + reference_logit, delta[..., 2:]], -1).sigmoid()
            if box_refine:
                reference = layer_boxes.detach()
                reference_logit = inverse_sigmoid(reference)
            hidden.append(tgt)
            boxes.append(layer_boxes)
        return torch.stack(hidden), torch.stack(boxes), proposals


def valid_ratio(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """mask [B,H,W] bool (True on padding) -> [B, 2] (w, h) share of the map that is the image."""
    height, width = mask.shape[-2:]
    valid_h = (~mask[:, :, 0]).sum(1).to(dtype) / height
    valid_w = (~mask[:, 0, :]).sum(1).to(dtype) / width
    return torch.stack([valid_w, valid_h], -1)
