"""What gets quantized and how: a validated, versioned description (no torch)."""
import re
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

from gplq_ros.offline.config import option
from gplq_ros.offline.rotation import ROTATIONS
from gplq_ros.onboard.fileformat import check_fields

SPEC_VERSION = 1
LINEAR_KINDS = ('qkv', 'proj', 'fc1', 'fc2')
ATTENTION_MODES = ('qkv_probs', 'qk_int8')
ATTN_KINDS = ('q', 'k', 'v', 'attn')


@dataclass
class QuantSpec:
    """Quantization of a DINOv2 ViT.

    Activation quantizers (per block, asymmetric, learnable s/z):
      * Linear inputs ``qkv_in`` (norm1 out), ``proj_in`` (attention out), ``fc1_in`` (norm2
        out), ``fc2_in`` (GELU out): ``act_bits``, per tensor or per channel
        (``act_granularity``; default per tensor at >= 8 bits, per channel below);
      * attention matmul inputs ``q`` (pre-scaled), ``k``, ``v`` and the softmax output
        ``attn``: ``attn_bits``, per tensor (``attention='qkv_probs'``); or only ``q`` and
        ``k``, signed and symmetric, with attention x V in float (``attention='qk_int8'``).
    Weights of every block Linear (qkv, proj, fc1, fc2): ``weight_bits``, symmetric, per
    output channel (``group_size=None``) or per group of input channels. The patch
    embedding, LayerNorms, LayerScales, biases, position embeddings and CLS token stay
    FP32, as do layers named in ``exclude``; layers in ``keep_8bit`` get 8-bit weights.
    """

    weight_bits: int = field(default=4, metadata=option('bits of the block Linear weights (2-8)'))
    act_bits: int = field(default=8, metadata=option('bits of the Linear-input activations (2-8)'))
    attn_bits: int = field(default=8, metadata=option('bits of q, k, v and the softmax output'))
    act_granularity: Optional[str] = field(default=None, metadata=option(
        'Linear-input quantizers per tensor or per channel (default: tensor at >= 8 bits, channel below)',
        ('tensor', 'channel')))
    group_size: Optional[int] = field(default=None, metadata=option(
        'weight scales per group of input channels; 0 = per output channel (the int8-kernel form)', none=0))
    weight_clip: str = field(default='mse', metadata=option('weight scale clipping', ('mse', 'minmax')))
    weight_method: str = field(default='gptq', metadata=option('weight rounding', ('gptq', 'rtn')))
    act_order: bool = field(default=False, metadata=option(
        'GPTQ quantizes the columns of the most active inputs first (per-output-channel weights only)'))
    gptq_damp: float = field(default=0.01, metadata=option('GPTQ damping, fraction of the mean Hessian diagonal'))
    attention: str = field(default='qkv_probs', metadata=option(
        'attention quantizers: qkv_probs = asymmetric q, k, v and softmax output; qk_int8 = signed '
        'symmetric q and k (the int8 attention OpenVINO fuses), attention x V in float', ATTENTION_MODES))
    rotation: str = field(default='none', metadata=option(
        'rotate the residual stream by an orthogonal matrix before quantizing (offline.rotation)', ROTATIONS))
    rotation_seed: int = field(default=0, metadata=option('seed of the random orthogonal rotation'))
    exclude: List[str] = field(default_factory=list, metadata=option('layers kept FP32, e.g. blocks.11.mlp.fc2'))
    keep_8bit: List[str] = field(default_factory=list,
                                 metadata=option('layers with 8-bit weights, e.g. blocks.9.attn.qkv'))
    version: int = SPEC_VERSION

    def __post_init__(self):
        if self.act_granularity is None:
            self.act_granularity = 'tensor' if self.act_bits >= 8 else 'channel'
        checks = [
            ('version', self.version == SPEC_VERSION),
            ('weight_bits', 2 <= self.weight_bits <= 8),
            ('act_bits', 2 <= self.act_bits <= 8),
            ('attn_bits', 2 <= self.attn_bits <= 8),
            ('act_granularity', self.act_granularity in ('tensor', 'channel')),
            ('group_size', self.group_size is None or self.group_size in (16, 32, 64, 128, 384)),
            ('weight_clip', self.weight_clip in ('mse', 'minmax')),
            ('weight_method', self.weight_method in ('gptq', 'rtn')),
            ('act_order', not self.act_order or self.group_size is None),
            ('gptq_damp', 0.0 < self.gptq_damp <= 1.0),
            ('attention', self.attention in ATTENTION_MODES),
            ('rotation', self.rotation in ROTATIONS),
            ('rotation_seed', isinstance(self.rotation_seed, int) and self.rotation_seed >= 0),
        ]
        check_fields(self, checks)
        for name in self.exclude + self.keep_8bit:
            if not re.fullmatch(r'blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)', name):
                raise ValueError(f'QuantSpec: layer name {name!r} is not blocks.N.(attn.qkv|attn.proj|'
                                 'mlp.fc1|mlp.fc2)')

    @classmethod
    def from_bits(cls, bits: str, **kw) -> 'QuantSpec':
        w, a = parse_bits(bits)
        return cls(weight_bits=w, act_bits=a, **kw)

    @property
    def tag(self) -> str:
        return f'w{self.weight_bits}a{self.act_bits}'

    def to_dict(self) -> dict:
        return asdict(self)


def parse_bits(bits: str) -> Tuple[int, int]:
    """'w4a8' -> (4, 8)."""
    m = re.fullmatch(r'w(\d)a(\d)', bits.lower())
    if not m:
        raise ValueError(f'--bits must look like w4a8, got {bits!r}')
    return int(m.group(1)), int(m.group(2))
