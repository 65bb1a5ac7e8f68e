"""Rotating DINOv2's residual stream (QuaRot/SliceGPT-style computational invariance; torch).

An orthogonal ``Q`` (C x C) that maps the all-ones vector to itself commutes with
LayerNorm's centring and keeps its variance: ``LN0(Q h) = Q LN0(h)`` for the
non-affine LayerNorm ``LN0``. So the whole residual stream can live rotated,
``h' = Q h``, with no change to the function:

* every writer to the stream (patch embedding, CLS token, position embeddings, each
  block's ``attn.proj`` and ``mlp.fc2`` with its LayerScale folded in) gets ``Q`` on its
  output side;
* every reader (``qkv`` after ``norm1``, ``fc1`` after ``norm2``) gets the LayerNorm's
  scale and shift folded in and ``Q^T`` on its input side; the block LayerNorms become
  non-affine;
* the extractor turns the stream back (``h = Q^T h'``, one C x C product) before the
  final LayerNorm and for every token it hands out.

Why: the quantized Linear inputs (``qkv_in``, ``fc1_in``) and the 4-bit weights of
``qkv``/``fc1`` (input side) and ``proj``/``fc2`` (output side) see mixed channels
instead of DINOv2's few outlier channels, so one per-tensor activation scale and one
scale per weight row lose less. The attention output and the GELU output (inputs of
``proj``/``fc2``) are not rotated.
"""
import torch
from torch import nn


def ones_preserving_orthogonal(dim: int, seed: int) -> torch.Tensor:
    """A random orthogonal (dim, dim) float32 matrix with ``Q @ 1 = 1``, reproducible from ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    u = torch.full((dim, 1), dim ** -0.5, dtype=torch.float64)
    e1 = torch.zeros(dim, 1, dtype=torch.float64)
    e1[0] = 1.0
    v = u - e1
    house = torch.eye(dim, dtype=torch.float64) - 2.0 * (v @ v.T) / float(v.T @ v)  # swaps u and e1
    basis = house[:, 1:]                      # orthonormal basis of the complement of u
    a = torch.randn(dim - 1, dim - 1, generator=g, dtype=torch.float64)
    r, tri = torch.linalg.qr(a)
    r = r * torch.sign(torch.diagonal(tri))   # Haar-distributed
    q = u @ u.T + basis @ r @ basis.T
    return q.float()


@torch.no_grad()
def rotate_vit_(vit: nn.Module, q: torch.Tensor) -> nn.Module:
    """Rotate a timm DINOv2 ViT's residual stream in place by ``q`` (see the module text)."""
    dim = vit.embed_dim
    q64 = q.double()
    if tuple(q.shape) != (dim, dim):
        raise ValueError(f'rotation shape {tuple(q.shape)} does not match embed_dim {dim}')
    ones = torch.ones(dim, 1, dtype=torch.float64)
    if not torch.allclose(q64 @ ones, ones, atol=1e-5) or \
            not torch.allclose(q64 @ q64.T, torch.eye(dim, dtype=torch.float64), atol=1e-5):
        raise ValueError('rotation must be orthogonal and map the all-ones vector to itself')

    def set_(param, value):
        param.copy_(value.to(param.dtype))

    def reader(lin: nn.Linear, norm: nn.LayerNorm):
        w, b = lin.weight.double(), lin.bias.double()
        set_(lin.bias, b + w @ norm.bias.double())
        set_(lin.weight, (w * norm.weight.double()) @ q64.T)
        norm.weight.fill_(1.0)
        norm.bias.zero_()

    def writer(lin: nn.Linear, ls: nn.Module):
        gamma = ls.gamma.double()
        set_(lin.weight, q64 @ (gamma[:, None] * lin.weight.double()))
        set_(lin.bias, q64 @ (gamma * lin.bias.double()))
        ls.gamma.fill_(1.0)

    conv = vit.patch_embed.proj
    w = conv.weight.double()
    set_(conv.weight, (q64 @ w.reshape(dim, -1)).reshape(w.shape))
    set_(conv.bias, q64 @ conv.bias.double())
    set_(vit.cls_token, vit.cls_token.double() @ q64.T)
    set_(vit.pos_embed, vit.pos_embed.double() @ q64.T)
    for blk in vit.blocks:
        reader(blk.attn.qkv, blk.norm1)
        writer(blk.attn.proj, blk.ls1)
        reader(blk.mlp.fc1, blk.norm2)
        writer(blk.mlp.fc2, blk.ls2)
    return vit
