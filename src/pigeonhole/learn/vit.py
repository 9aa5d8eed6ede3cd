"""A plain Vision Transformer in the layout of Meta's DINOv2 checkpoints, as a frozen feature extractor.

DINOv2 (Oquab et al., 2023) is self-supervised: its features separate fine-grained classes without any
fine-tuning (81.1 % ImageNet linear probe for ViT-S/14), which suits a ridge head. The parameter names follow the
published ``dinov2_vits14_pretrain.pth`` (``patch_embed.proj``, ``blocks.N.attn.qkv``, ``blocks.N.ls1.gamma``, ...),
so the file loads strictly. Its position embeddings were trained for 37 x 37 patches (518 px); they are resized
once at load time to the extractor's grid, bicubically as DINOv2 does (:func:`convert_state_dict`), so the
exported graph holds no interpolation. The feature is DINOv2's linear-evaluation vector: the class token
concatenated with the mean of the patch tokens, after the final norm.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, dim * 4)
        self.ls2 = _LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    """(N, 3, S, S) normalised images -> (N, 2 * dim) features; S a multiple of the patch size."""

    def __init__(self, *, image_size: int = 224, patch: int = 14, dim: int = 384, depth: int = 12,
                 heads: int = 6) -> None:
        super().__init__()
        self.patch = patch
        grid = image_size // patch
        self.patch_embed = _PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # unused at inference; kept so the file loads strictly
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.out_dim = 2 * dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        return torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=1)


def convert_state_dict(state: dict[str, torch.Tensor], image_size: int, patch: int = 14) -> dict[str, torch.Tensor]:
    """The checkpoint with its position embeddings resized to ``image_size``'s patch grid."""
    out = dict(state)
    pos = out["pos_embed"]
    old = int(math.isqrt(pos.shape[1] - 1))
    new = image_size // patch
    if old != new:
        grid = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        out["pos_embed"] = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)], dim=1)
    return out
