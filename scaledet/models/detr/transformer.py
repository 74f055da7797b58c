"""DETR's post-norm transformer encoder/decoder.

Shapes follow ``torch.nn.MultiheadAttention``'s sequence-first layout: ``[S, B, C]`` with ``S``
the number of tokens (``H*W`` feature pixels in the encoder, ``Q`` queries in the decoder).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class FeedForward(nn.Module):
    """``linear2(dropout(relu(linear1(x))))``: [S,B,C] -> [S,B,C]."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class EncoderLayer(nn.Module):
    """Self-attention (positions added to queries and keys, not values) then FFN, each post-normed."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, padding_mask: Tensor) -> Tensor:
        """src, pos [HW,B,C]; padding_mask [B,HW] bool (True = ignore) -> [HW,B,C]."""
        query = src + pos
        attended = self.self_attn(query, query, src, key_padding_mask=padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attended))
        return self.norm2(src + self.dropout2(self.ffn(src)))


class DecoderLayer(nn.Module):
    """Query self-attention, cross-attention to the encoder memory, then FFN; each post-normed."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor, padding_mask: Tensor,
                self_attention_mask: Tensor | None = None) -> Tensor:
        """tgt, query_pos [Q,B,C]; memory, pos [HW,B,C]; padding_mask [B,HW];
        self_attention_mask ``None`` or bool [Q,Q] / [B*heads,Q,Q] (True = may not attend) -> [Q,B,C]."""
        query = tgt + query_pos
        attended = self.self_attn(query, query, tgt, attn_mask=self_attention_mask, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attended))
        attended = self.cross_attn(
            tgt + query_pos, memory + pos, memory, key_padding_mask=padding_mask, need_weights=False
        )[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        return self.norm3(tgt + self.dropout3(self.ffn(tgt)))


class Transformer(nn.Module):
    """Encoder (no final norm) + decoder from zero targets, returning every decoder layer's output
    passed through the shared final LayerNorm (the running output between layers is not normed).

    Parameters with more than one dimension are Xavier-uniform initialised, as in the paper.
    """

    def __init__(
        self,
        dim: int = 256,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        enc_layers: int = 6,
        dec_layers: int = 6,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        encoder_layer = EncoderLayer(dim, num_heads, ffn_dim, dropout)
        decoder_layer = DecoderLayer(dim, num_heads, ffn_dim, dropout)
        self.encoder = nn.ModuleList(copy.deepcopy(encoder_layer) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(copy.deepcopy(decoder_layer) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def forward(self, features: Tensor, padding_mask: Tensor, pos: Tensor, queries: Tensor,
                extra_queries: tuple[Tensor, Tensor] | None = None,
                self_attention_mask: Tensor | None = None) -> Tensor:
        """features, pos [B,C,H,W]; padding_mask [B,H,W] bool; queries [Q,C] (positional queries
        shared by the batch, zero content input) -> decoder outputs [L,B,T,C] (L = number of
        decoder layers, T = Q without ``extra_queries``).

        Training accelerators (:mod:`scaledet.models.detr.accelerators`) add ``extra_queries =
        (content [B,D,C], positional [B,D,C])`` after the Q shared ones (T = Q + D) and a decoder
        ``self_attention_mask``, bool [T,T] or [B,T,T], True = may not attend."""
        batch = features.shape[0]
        src = features.flatten(2).permute(2, 0, 1)  # [HW,B,C]
        pos = pos.flatten(2).permute(2, 0, 1)  # [HW,B,C]
        mask = padding_mask.flatten(1)  # [B,HW]
        query_pos = queries.unsqueeze(1).expand(-1, batch, -1)  # [Q,B,C]
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos, mask)
        tgt = query_pos.new_zeros(query_pos.shape)
        if extra_queries is not None:
            content, position = extra_queries
            tgt = torch.cat([tgt, content.transpose(0, 1)])
            query_pos = torch.cat([query_pos, position.transpose(0, 1)])
        if self_attention_mask is not None and self_attention_mask.dim() == 3:  # per image -> per image and head
            self_attention_mask = self_attention_mask.repeat_interleave(self.decoder[0].self_attn.num_heads, dim=0)
        outputs = []
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query_pos, mask, self_attention_mask)
            outputs.append(self.decoder_norm(tgt))
        return torch.stack(outputs).transpose(1, 2)  # [L,T,B,C] -> [L,B,T,C]
