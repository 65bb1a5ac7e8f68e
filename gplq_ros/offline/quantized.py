"""DINOv2 with fake-quantized activations and weights (torch), built from a QuantSpec.

Every block's ``attn`` becomes ``QAttention`` and its four Linears become ``QLinear``;
parameter names stay timm's (``blocks.3.mlp.fc1.weight`` ...), so the FP32 weights, the
quantized weights and the artifact share one naming. ``modes(act=, weight=, observe=)``
switches the two kinds of quantization (and statistics collection) for a ``with`` block and
restores the previous switches on exit (stage 1 runs activations only); ``set_modes`` sets
them for good (the calibration entry point ends with both on).
"""
import contextlib
import copy
from dataclasses import dataclass, replace
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from gplq_ros.offline.grids import Grid
from gplq_ros.offline.primitives import ActQuantizer, dequantize_weight
from gplq_ros.offline.rotation import ones_preserving_orthogonal, rotate_vit_
from gplq_ros.offline.spec import QuantSpec
from gplq_ros.offline.backbone import DinoV2Extractor


@dataclass(frozen=True)
class Modes:
    act: bool = False        # activation quantizers quantize
    weight: bool = False     # Linears use their quantized weights (layers in spec.exclude never do)
    observe: bool = False    # activation quantizers collect min/max statistics
    comp: bool = False       # blocks add their linear compensation (offline.compensation), where set


class QLinear(nn.Module):
    """Linear with an input activation quantizer and optional fixed quantized weights.

    With weights quantized, the forward uses ``W + (W_q - W).detach()``: the value is W_q,
    the gradient reaches W (straight-through), as needed for gradient alignment."""

    def __init__(self, linear: nn.Linear, in_quant: ActQuantizer, name: str):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_quant = in_quant
        self.name = name
        # non-persistent buffers: follow .to(device), stay out of the state dict
        self.register_buffer('weight_q', None, persistent=False)
        self.register_buffer('codes', None, persistent=False)
        self.register_buffer('scales', None, persistent=False)
        # bias correction (offline.weight_ptq.correct_biases): added to the bias with the quantized weights
        self.register_buffer('bias_delta', None, persistent=False)
        self.bits: Optional[int] = None
        self.group_size: Optional[int] = None
        self.grid: Optional[Grid] = None              # a 4-bit 'multiplier' / 'codebook' grid (offline.grids)
        self.weight_enabled = False
        self.soft_weight: Optional[nn.Module] = None  # offline.rounding: learnable rounding, while refined

    def set_quantized(self, codes: torch.Tensor, scales: torch.Tensor, bits: int,
                      group_size: Optional[int], grid: Optional[Grid] = None):
        if grid is not None and (bits != 4 or group_size is not None or scales.shape[1] != 1):
            raise ValueError(f'{self.name}: a {grid.kind} grid needs 4-bit codes and per-output-channel scales, '
                             f'got bits={bits}, group_size={group_size}, scales {tuple(scales.shape)}')
        self.codes, self.scales, self.bits, self.group_size, self.grid = codes, scales, bits, group_size, grid
        self.weight_q = self.values(codes).to(self.weight.dtype)

    def values(self, codes: torch.Tensor) -> torch.Tensor:
        """The dequantized weights that ``codes`` stand for with this layer's scales and grid."""
        if self.grid is None:
            return dequantize_weight(codes, self.scales, self.group_size)
        return self.grid.int8_values(codes) * self.scales.float()

    def forward(self, x):
        x = self.in_quant(x)
        w = self.weight
        if self.weight_enabled and self.soft_weight is not None:
            w = self.soft_weight()
        elif self.weight_enabled and self.weight_q is not None:
            # exact W_q when no gradient is wanted; STE form (value W_q up to rounding) otherwise
            w = w + (self.weight_q - w).detach() if w.requires_grad else self.weight_q
        bias = self.bias
        if self.weight_enabled and self.bias_delta is not None:
            bias = bias + self.bias_delta
        return F.linear(x, w, bias)


class QAttention(nn.Module):
    """timm Attention with quantized q, k, v and softmax output (explicit matmuls)."""

    def __init__(self, attn: nn.Module, qkv: QLinear, proj: QLinear, q: ActQuantizer,
                 k: ActQuantizer, v: Optional[ActQuantizer], probs: Optional[ActQuantizer]):
        super().__init__()
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.scale = attn.scale
        self.qkv, self.proj = qkv, proj
        # v and probs None: attention x V stays float (QuantSpec.attention='qk_int8')
        self.q_quant, self.k_quant = q, k
        self.v_quant, self.attn_quant = v or nn.Identity(), probs or nn.Identity()

    def forward(self, x, attn_mask=None, **_):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = self.q_quant(q * self.scale)
        k = self.k_quant(k)
        v = self.v_quant(v)
        attn = self.attn_quant((q @ k.transpose(-2, -1)).softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class QuantDinoV2(nn.Module):
    """A quantizable copy of a DinoV2Extractor (the original is left untouched)."""

    def __init__(self, extractor: DinoV2Extractor, spec: QuantSpec):
        super().__init__()
        vit = copy.deepcopy(extractor.vit)
        self.spec = spec
        self.quantizers = nn.ModuleDict()
        self.linears: Dict[str, QLinear] = {}
        dim = vit.embed_dim
        hidden = vit.blocks[0].mlp.fc1.out_features

        def aq(name, bits, channels, symmetric=False):
            q = ActQuantizer(bits, channels, name, symmetric)
            self.quantizers[name.replace('.', '_')] = q
            return q

        per_ch = spec.act_granularity == 'channel'
        for i, blk in enumerate(vit.blocks):
            p = f'blocks.{i}.'
            qkv = QLinear(blk.attn.qkv, aq(p + 'qkv_in', spec.act_bits, dim if per_ch else None), p + 'attn.qkv')
            proj = QLinear(blk.attn.proj, aq(p + 'proj_in', spec.act_bits, dim if per_ch else None), p + 'attn.proj')
            if spec.attention == 'qkv_probs':
                attn_q = [aq(p + n, spec.attn_bits, None) for n in ('q', 'k', 'v', 'attn')]
            else:  # 'qk_int8': signed symmetric q and k, attention x V in float
                attn_q = [aq(p + 'q', spec.attn_bits, None, True), aq(p + 'k', spec.attn_bits, None, True), None, None]
            blk.attn = QAttention(blk.attn, qkv, proj, *attn_q)
            blk.mlp.fc1 = QLinear(blk.mlp.fc1, aq(p + 'fc1_in', spec.act_bits, dim if per_ch else None), p + 'mlp.fc1')
            blk.mlp.fc2 = QLinear(blk.mlp.fc2, aq(p + 'fc2_in', spec.act_bits, hidden if per_ch else None),
                                  p + 'mlp.fc2')
            for lin in (qkv, proj, blk.mlp.fc1, blk.mlp.fc2):
                self.linears[lin.name] = lin
        rotation = extractor.rotation
        if spec.rotation != 'none' and rotation is None:
            rotation = ones_preserving_orthogonal(dim, spec.rotation_seed)
            rotate_vit_(vit, rotation)
        self.extractor = DinoV2Extractor(vit, extractor.weights_sha256, rotation)
        self.extractor.requires_grad_(False)
        self.extractor.checkpoint = True  # calibration backward: recompute blocks, keep memory low
        # per block: (A (C, r), B (r, C), bias (C,)) adding x A B + bias to the block's output
        self.compensation: Dict[int, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for i, blk in enumerate(vit.blocks):
            blk.register_forward_hook(self._compensate_hook(i))
        self._modes = Modes()
        self.set_modes()

    def _compensate_hook(self, index: int):
        def hook(_module, inp, out):
            c = self.compensation.get(index) if self._modes.comp else None
            return out if c is None else out + (inp[0] @ c[0]) @ c[1] + c[2]
        return hook

    # -- switches ---------------------------------------------------------------------
    @property
    def current_modes(self) -> Modes:
        return self._modes

    def set_modes(self, act: Optional[bool] = None, weight: Optional[bool] = None,
                  observe: Optional[bool] = None, comp: Optional[bool] = None) -> 'QuantDinoV2':
        """Set the given switches (None: unchanged) until changed again."""
        m = replace(self._modes, **{k: v for k, v in (('act', act), ('weight', weight), ('observe', observe),
                                                      ('comp', comp)) if v is not None})
        for q in self.quantizers.values():
            q.enable(m.act)
            q.observe(m.observe)
        for lin in self.linears.values():
            lin.weight_enabled = m.weight and lin.name not in self.spec.exclude
        self._modes = m
        return self

    @contextlib.contextmanager
    def modes(self, act: Optional[bool] = None, weight: Optional[bool] = None,
              observe: Optional[bool] = None, comp: Optional[bool] = None) -> Iterator['QuantDinoV2']:
        """``with qm.modes(act=True, weight=False): ...`` -- the given switches inside the
        block, the previous ones restored on exit (also when the block raises)."""
        saved = self._modes
        self.set_modes(act, weight, observe, comp)
        try:
            yield self
        finally:
            self.set_modes(saved.act, saved.weight, saved.observe, saved.comp)

    # -- forward ----------------------------------------------------------------------
    def block_tokens(self, x):
        return self.extractor.block_tokens(x)

    def forward(self, x, keys=((11, 'token'),), norm=True):
        return self.extractor(x, keys, norm)
