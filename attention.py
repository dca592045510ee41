"""Attention written out: multi-head self- and cross-attention and the transformer block.

Scaled dot-product attention (Vaswani et al. 2017, eq. 1): softmax(Q K^T / sqrt(d)) V, with
Q from the input and K, V from a context: the input itself (self-attention) or the style
tokens (cross-attention, how the paper injects the target style into the U-Net, as in
latent diffusion, Rombach et al. 2022, eq. 3). `fused=True` runs the same maths through
F.scaled_dot_product_attention (one kernel); the tests prove the two paths equal.

    x (B, N, dim), context (B, M, context_dim) -> (B, N, dim)
    SpatialTransformer: (B, C, H, W) feature map -> the same shape, positions as tokens
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def attention_weights(q, k, mask=None):
    """softmax(q k^T / sqrt(d)) over keys; q (B, h, N, d), k (B, h, M, d), mask (B, M) with
    True = attend. A row with every key masked gets zero weights instead of NaN."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])          # (B, h, N, M)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    weights = scores.softmax(dim=-1)
    return torch.nan_to_num(weights, nan=0.0)


class Attention(nn.Module):
    """Multi-head attention with projections W_Q, W_K, W_V and W_O."""

    def __init__(self, dim, context_dim=None, heads=4, dim_head=32, fused=False):
        super().__init__()
        inner, context_dim = heads * dim_head, context_dim or dim
        self.heads, self.fused = heads, fused
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def _split(self, x):
        B, N, _ = x.shape
        return x.view(B, N, self.heads, -1).transpose(1, 2)             # (B, h, N, d)

    def forward(self, x, context=None, key_padding_mask=None):
        context = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), \
            self._split(self.to_v(context))
        if self.fused:
            mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            if key_padding_mask is not None:                           # all-masked rows -> 0
                out = out.masked_fill(~key_padding_mask.any(-1)[:, None, None, None], 0.0)
        else:
            out = attention_weights(q, k, key_padding_mask) @ v        # (B, h, N, d)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)  # (B, N, h d)
        return self.to_out(out)


class FeedForward(nn.Module):
    """GEGLU feed-forward (Shazeer 2020), as in latent diffusion's transformer blocks."""

    def __init__(self, dim, mult=4):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(h * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the context, feed-forward; residuals."""

    def __init__(self, dim, context_dim, heads=4, dim_head=32, fused=False):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, None, heads, dim_head, fused)
        self.cross_attn = Attention(dim, context_dim, heads, dim_head, fused)
        self.ff = FeedForward(dim)

    def forward(self, x, context, context_mask=None):
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), context, context_mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer blocks over a feature map's positions (latent diffusion's SpatialTransformer).

    The output projection starts at zero, so a new block begins as the identity.
    """

    def __init__(self, channels, context_dim, heads=4, dim_head=32, depth=1, fused=False):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(min(32, channels // 4), channels)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.blocks = nn.ModuleList([TransformerBlock(inner, context_dim, heads, dim_head, fused)
                                     for _ in range(depth)])
        self.proj_out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x, context, context_mask=None):
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x))                                  # (B, inner, H, W)
        h = h.flatten(2).transpose(1, 2)                                # (B, H W, inner)
        for block in self.blocks:
            h = block(h, context, context_mask)
        h = h.transpose(1, 2).reshape(B, -1, H, W)                      # (B, inner, H, W)
        return x + self.proj_out(h)
