"""Quantization math (torch): affine fake-quant with learnable scale/zero-point, the
straight-through estimator, LSQ gradient scaling, observers and symmetric weight codes.

Activation quantizer (asymmetric, unsigned codes in [0, 2^b - 1])::

    Q(x) = (clamp(round(x / s) + round(z), qmin, qmax) - round(z)) * s

``round`` uses the straight-through estimator, so d/ds and d/dz are the LSQ(+)
gradients; both are scaled by ``1 / sqrt(numel_per_scale * qmax)`` (LSQ).
Weights are symmetric signed codes in [-2^(b-1), 2^(b-1) - 1] (4 bits: [-8, 7]) with
one scale per output channel or per group of ``group_size`` input channels; the clip
ratio of each row/group is the one (of a grid) that minimizes the squared error.
"""
import math
from typing import Optional, Tuple

import torch
from torch import nn


def act_qrange(bits: int) -> Tuple[int, int]:
    return 0, (1 << bits) - 1


def weight_qrange(bits: int) -> Tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Value of x, gradient multiplied by g."""
    return (x - x * g).detach() + x * g


def fake_quant_reference(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                         qmin: int, qmax: int, g: float = 1.0) -> torch.Tensor:
    """The quantizer written with autograd (STE + LSQ scaling); ``fake_quant`` computes the
    same values and gradients while saving only x for backward (tested against this)."""
    s = grad_scale(scale, g).abs().clamp_min(1e-8)
    z = round_ste(grad_scale(zero_point, g))
    q = torch.clamp(round_ste(x / s) + z, qmin, qmax)
    return (q - z) * s


def _reduce_to(t: torch.Tensor, shape) -> torch.Tensor:
    """Sum a broadcast gradient back to a per-tensor (1,) or per-last-dim (C,) shape."""
    return t.reshape(-1, shape[0]).sum(0) if shape[0] > 1 else t.sum().reshape(1)


class _FakeQuant(torch.autograd.Function):
    @staticmethod
    def symbolic(g, x, scale, zero_point, qmin, qmax, gs):
        """ONNX: QuantizeLinear (uint8 codes, or int8 for a signed range) [-> Clip to [qmin, qmax]
        below 8 bits] -> DequantizeLinear. Exact when scale > 0 and zero_point is integral
        (``ActQuantizer.freeze`` makes them so)."""
        signed = qmin < 0
        lo_t, hi_t = (-128, 127) if signed else (0, 255)
        if qmin < lo_t or qmax > hi_t:
            raise ValueError(f'ONNX export supports codes in [0, 255] or [-128, 127], got [{qmin}, {qmax}]')
        per_tensor = scale.type().sizes() in ([1], [])
        if per_tensor:
            scale = g.op('Squeeze', scale)
            zero_point = g.op('Squeeze', zero_point)
        zp = g.op('Cast', zero_point, to_i=3 if signed else 2)  # TensorProto.INT8 / UINT8
        attrs = {} if per_tensor else {'axis_i': -1}
        q = g.op('QuantizeLinear', x, scale, zp, **attrs)
        if qmin > lo_t or qmax < hi_t:
            dtype = torch.int8 if signed else torch.uint8
            lo = g.op('Constant', value_t=torch.tensor(qmin, dtype=dtype))
            hi = g.op('Constant', value_t=torch.tensor(qmax, dtype=dtype))
            q = g.op('Clip', q, lo, hi)
        return g.op('DequantizeLinear', q, scale, zp, **attrs)

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, g):
        s = scale.abs().clamp_min(1e-8)
        z = torch.round(zero_point)
        ctx.save_for_backward(x, scale, zero_point)
        ctx.q = (qmin, qmax, g)
        return (torch.clamp(torch.round(x / s) + z, qmin, qmax) - z) * s

    @staticmethod
    def backward(ctx, gy):
        x, scale, zero_point = ctx.saved_tensors
        qmin, qmax, g = ctx.q
        s = scale.abs().clamp_min(1e-8)
        z = torch.round(zero_point)
        v = x / s
        q = torch.round(v) + z
        low, high = q < qmin, q > qmax
        inside = ~(low | high)
        gx = gy * inside
        ds = torch.where(inside, torch.round(v) - v, torch.where(low, qmin - z, qmax - z))
        gs = _reduce_to(gy * ds, scale.shape) * torch.sign(scale) * g
        gz = _reduce_to(gy * (~inside) * (-s), zero_point.shape) * g
        return gx, gs, gz, None, None, None


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
               qmin: int, qmax: int, g: float = 1.0) -> torch.Tensor:
    """Q(x) with STE/LSQ gradients to x, scale and zero_point (scale/zp: (1,) or (C,))."""
    return _FakeQuant.apply(x, scale, zero_point, qmin, qmax, g)


class ActQuantizer(nn.Module):
    """Learnable affine activation quantizer, per tensor or per channel (last dim).

    Modes: ``observe()`` records ranges (min/max and percentiles) while passing x
    through; ``init_from_stats(method)`` sets s, z; ``enable()`` fake-quantizes.
    ``symmetric``: signed codes in [-2^(b-1), 2^(b-1) - 1] with the zero-point fixed at 0
    (only the scale is learned); exported as int8 QuantizeLinear.
    """

    def __init__(self, bits: int, channels: Optional[int] = None, name: str = '', symmetric: bool = False):
        super().__init__()
        if not 2 <= bits <= 16:
            raise ValueError(f'{name}: activation bits must be in [2, 16], got {bits}')
        self.bits, self.channels, self.name, self.symmetric = bits, channels, name, symmetric
        n = channels or 1
        self.scale = nn.Parameter(torch.ones(n))
        self.zero_point = nn.Parameter(torch.zeros(n))
        self.enabled = False
        self.observing = False
        self.track_error = False
        self.last_error: Optional[torch.Tensor] = None
        self.error_grads: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._stats = []

    @property
    def per_channel(self) -> bool:
        return self.channels is not None

    def observe(self, on: bool = True):
        self.observing = on
        if on:
            self._stats = []
        return self

    def enable(self, on: bool = True):
        self.enabled = on
        return self

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1]) if self.per_channel else x.reshape(1, -1).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            with torch.no_grad():
                flat = self._reduce(x.detach().float())
                if flat.shape[0] > 200_000:  # subsample huge tensors for quantiles
                    idx = torch.randint(0, flat.shape[0], (200_000,), generator=_gen(flat.shape[0]))
                    sample = flat[idx.to(flat.device)]
                else:
                    sample = flat
                qs = torch.quantile(sample, torch.tensor([0.001, 0.005, 0.995, 0.999], device=flat.device),
                                    dim=0)
                self._stats.append(torch.stack([flat.min(0).values, qs[0], qs[1], qs[2], qs[3],
                                                flat.max(0).values]))
            return x
        if not self.enabled:
            return x
        qmin, qmax = self.qrange
        g = 1.0 / math.sqrt(x.numel() / self.scale.numel() * qmax)
        if self.track_error:
            self._local_error(x.detach(), qmin, qmax, g)
        return fake_quant(x, self.scale, self._zero(), qmin, qmax, g)

    @property
    def qrange(self) -> Tuple[int, int]:
        return weight_qrange(self.bits) if self.symmetric else act_qrange(self.bits)

    def _zero(self) -> torch.Tensor:
        """The zero-point the forward uses: the learned one, or a constant 0 when symmetric."""
        return torch.zeros_like(self.zero_point) if self.symmetric else self.zero_point

    def _local_error(self, x: torch.Tensor, qmin: int, qmax: int, g: float) -> None:
        """||Q(x) - x||^2 / ||x||^2 for this input, and its gradient w.r.t. (s, z) computed
        here and now: the regularizer depends on nothing else, so no graph is kept for it."""
        # identity saved-tensor hooks: inside a checkpointed block, this small graph must not
        # be handed to the checkpoint's recomputation machinery
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            y = fake_quant(x, self.scale, self._zero(), qmin, qmax, g)
            err = ((y - x) ** 2).mean() / (x ** 2).mean().clamp_min(1e-12)
            self.error_grads = torch.autograd.grad(err, [self.scale, self.zero_point], allow_unused=True,
                                                   materialize_grads=True)
        self.last_error = err.detach()

    @torch.no_grad()
    def init_from_stats(self, method: str = 'minmax'):
        """minmax: [min, max] over batches; percentile: mean of per-batch 0.1%/99.9%
        (0.5/99.5% below 6 bits) quantiles."""
        if not self._stats:
            raise RuntimeError(f'{self.name}: no statistics observed')
        st = torch.stack(self._stats)  # (batches, 6, n)
        if method == 'minmax':
            lo, hi = st[:, 0].min(0).values, st[:, 5].max(0).values
        elif method == 'percentile':
            lo_i, hi_i = (2, 3) if self.bits < 6 else (1, 4)
            lo, hi = st[:, lo_i].mean(0), st[:, hi_i].mean(0)
        else:
            raise ValueError(f'{self.name}: unknown init method {method!r}')
        lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
        qmin, qmax = self.qrange
        if self.symmetric:
            s = (torch.maximum(-lo, hi) / qmax).clamp_min(1e-8)
            self.scale.copy_(s)
            self.zero_point.zero_()
        else:
            s = ((hi - lo) / (qmax - qmin)).clamp_min(1e-8)
            self.scale.copy_(s)
            self.zero_point.copy_(qmin - lo / s)
        self._stats = []
        self.observing = False

    @torch.no_grad()
    def freeze(self):
        """Store the effective (|s| clamped, rounded z) values; the forward is unchanged."""
        s, z = self.qparams()
        self.scale.copy_(s)
        self.zero_point.copy_(z)
        return self

    def qparams(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scale > 0, integer zero-point) as used in the forward pass."""
        return self.scale.detach().abs().clamp_min(1e-8), torch.round(self._zero().detach())


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _grouped(w: torch.Tensor, group_size: Optional[int]) -> torch.Tensor:
    out_f, in_f = w.shape
    if group_size is None or group_size >= in_f:
        return w.reshape(out_f, 1, in_f)
    if in_f % group_size:
        raise ValueError(f'in_features={in_f} is not a multiple of group_size={group_size}')
    return w.reshape(out_f, in_f // group_size, group_size)


@torch.no_grad()
def weight_scales(w: torch.Tensor, bits: int, group_size: Optional[int] = None,
                  clip: str = 'mse', grid: int = 20, min_ratio: float = 0.5) -> torch.Tensor:
    """Symmetric scales (out, n_groups): per output channel when group_size is None.

    clip='minmax' uses max|w|; clip='mse' tries ``grid`` ratios in [min_ratio, 1] of it
    and keeps, per row/group, the one with the smallest squared rounding error."""
    qmin, qmax = weight_qrange(bits)
    g = _grouped(w.float(), group_size)
    amax = g.abs().amax(-1).clamp_min(1e-12)
    if clip == 'minmax':
        return amax / qmax
    if clip != 'mse':
        raise ValueError(f'unknown weight clip {clip!r} (minmax|mse)')
    best_err = torch.full_like(amax, float('inf'))
    best = amax / qmax
    for r in torch.linspace(1.0, min_ratio, grid).tolist():
        s = amax * r / qmax
        q = torch.clamp(torch.round(g / s[..., None]), qmin, qmax) * s[..., None]
        err = ((q - g) ** 2).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best


def weight_codes(w: torch.Tensor, scales: torch.Tensor, bits: int,
                 group_size: Optional[int] = None) -> torch.Tensor:
    """Integer codes (int8 tensor, shape of w) for given scales (round to nearest)."""
    qmin, qmax = weight_qrange(bits)
    g = _grouped(w.float(), group_size)
    return torch.clamp(torch.round(g / scales[..., None]), qmin, qmax).reshape(w.shape).to(torch.int8)


def dequantize_weight(codes: torch.Tensor, scales: torch.Tensor,
                      group_size: Optional[int] = None) -> torch.Tensor:
    g = _grouped(codes.float(), group_size)
    return (g * scales[..., None]).reshape(codes.shape)
