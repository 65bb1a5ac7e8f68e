"""What gets quantized and how: a validated, versioned description (no torch)."""
import re
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from ..fileformat import check_fields

SPEC_VERSION = 1
LINEAR_KINDS = ('qkv', 'proj', 'fc1', 'fc2')
ATTN_KINDS = ('q', 'k', 'v', 'attn')


@dataclass
class QuantSpec:
    """Quantization of a DINOv2 ViT.

    Activation quantizers (per block, asymmetric, learnable s/z):
      * Linear inputs ``qkv_in`` (norm1 out), ``proj_in`` (attention out), ``fc1_in`` (norm2
        out), ``fc2_in`` (GELU out): ``act_bits``, per tensor or per channel
        (``act_granularity``; default per tensor at >= 8 bits, per channel below);
      * attention matmul inputs ``q`` (pre-scaled), ``k``, ``v`` and the softmax output
        ``attn``: ``attn_bits``, per tensor.
    Weights of every block Linear (qkv, proj, fc1, fc2): ``weight_bits``, symmetric, per
    output channel (``group_size=None``) or per group of input channels. The patch
    embedding, LayerNorms, LayerScales, biases, position embeddings and CLS token stay
    FP32, as do layers named in ``exclude``; layers in ``keep_8bit`` get 8-bit weights.
    """

    weight_bits: int = 4
    act_bits: int = 8
    attn_bits: int = 8
    act_granularity: Optional[str] = None  # 'tensor' | 'channel'; None: by act_bits
    group_size: Optional[int] = None
    weight_clip: str = 'mse'
    weight_method: str = 'gptq'
    exclude: List[str] = field(default_factory=list)
    keep_8bit: List[str] = field(default_factory=list)
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
        ]
        check_fields(self, checks)
        for name in self.exclude + self.keep_8bit:
            if not re.fullmatch(r'blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)', name):
                raise ValueError(f'QuantSpec: layer name {name!r} is not blocks.N.(attn.qkv|attn.proj|'
                                 'mlp.fc1|mlp.fc2)')

    @classmethod
    def from_bits(cls, bits: str, **kw) -> 'QuantSpec':
        m = re.fullmatch(r'w(\d)a(\d)', bits.lower())
        if not m:
            raise ValueError(f'--bits must look like w4a8, got {bits!r}')
        return cls(weight_bits=int(m.group(1)), act_bits=int(m.group(2)), **kw)

    @property
    def tag(self) -> str:
        return f'w{self.weight_bits}a{self.act_bits}'

    def to_dict(self) -> dict:
        return asdict(self)
