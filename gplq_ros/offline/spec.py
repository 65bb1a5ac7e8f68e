"""What gets quantized and how: a validated, versioned description (no torch)."""
import math
import re
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

from gplq_ros.onboard.settings import Setting, build, check_exclusive, setting, validate

SPEC_VERSION = 1
LINEAR_KINDS = ('qkv', 'proj', 'fc1', 'fc2')
ATTENTION_MODES = ('qkv_probs', 'qk_int8')
ATTN_KINDS = ('q', 'k', 'v', 'attn')
ROTATIONS = ('none', 'orthogonal')          # offline.rotation
GRANULARITIES = ('tensor', 'channel')
GROUP_SIZES = (16, 32, 64, 128, 384)
WEIGHT_CLIPS = ('mse', 'minmax', 'hessian')
WEIGHT_GRIDS = ('uniform', 'multiplier', 'codebook')   # offline.grids
GRID_GROUPS = (16, 32, 64, 128)
WEIGHT_METHODS = ('gptq', 'rtn')


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

    weight_bits: int = setting(4, 'bits of the block Linear weights', range=(2, 8))
    act_bits: int = setting(8, 'bits of the Linear-input activations', range=(2, 8))
    attn_bits: int = setting(8, 'bits of q, k, v and the softmax output', range=(2, 8))
    act_granularity: Optional[str] = setting(None, 'Linear-input quantizers per tensor or per channel (default: '
                                             'tensor at >= 8 bits, channel below)', choices=GRANULARITIES)
    group_size: Optional[int] = setting(None, 'weight scales per group of input channels; 0 = per output channel '
                                        '(the int8-kernel form)', choices=GROUP_SIZES, none=0)
    weight_clip: str = setting('mse', 'weight scale clipping: mse = per row/group the clip ratio with the least '
                               'squared rounding error; minmax = no clipping; hessian = GPTQ run for several clip '
                               'ratios (and the mse scales), per output channel the result with the least '
                               'Hessian-weighted output error (never more than minmax or mse)', choices=WEIGHT_CLIPS)
    weight_grid: str = setting('uniform', '4-bit grid of the per-output-channel weights (offline.grids): uniform = '
                               's * q; multiplier = s * k_g * q with an integer k_g in [1, 15] per group of '
                               'grid_group inputs; codebook = s * L[q] with 16 int8 levels per output channel; all '
                               'decode into int8 weights (same graph, same kernels)', choices=WEIGHT_GRIDS)
    grid_group: int = setting(32, "input channels per multiplier of weight_grid='multiplier'", choices=GRID_GROUPS)
    weight_method: str = setting('gptq', 'weight rounding', choices=WEIGHT_METHODS)
    act_order: bool = setting(False, 'GPTQ quantizes the columns of the most active inputs first (per-output-channel '
                              'weights only)')
    gptq_damp: float = setting(0.01, 'GPTQ damping, fraction of the mean Hessian diagonal', range=(1e-6, 1.0))
    attention: str = setting('qkv_probs', 'attention quantizers: qkv_probs = asymmetric q, k, v and softmax output; '
                             'qk_int8 = signed symmetric q and k (the int8 attention OpenVINO fuses), attention x V '
                             'in float', choices=ATTENTION_MODES)
    rotation: str = setting('none', 'rotate the residual stream by an orthogonal matrix before quantizing '
                            '(offline.rotation)', choices=ROTATIONS)
    rotation_seed: int = setting(0, 'seed of the random orthogonal rotation', range=(0, math.inf))
    exclude: List[str] = setting(help='layers kept FP32, e.g. blocks.11.mlp.fc2', default_factory=list)
    keep_8bit: List[str] = setting(help='layers with 8-bit weights, e.g. blocks.9.attn.qkv', default_factory=list)
    version: int = SPEC_VERSION

    # an option that is not a field: --bits wXaY (from_options translates it)
    SHORTHANDS = (Setting('bits', None, 'shorthand for --weight-bits X --act-bits Y: wXaY, e.g. w4a8, w4a4, w8a8'),)

    def __post_init__(self):
        if self.version != SPEC_VERSION:
            raise ValueError(f'QuantSpec.version={self.version!r}: this gplq_ros reads version {SPEC_VERSION}')
        if self.act_granularity is None:
            self.act_granularity = 'tensor' if self.act_bits >= 8 else 'channel'
        validate(self)
        if not isinstance(self.rotation_seed, int):
            raise ValueError(f'QuantSpec.rotation_seed={self.rotation_seed!r}: must be an integer')
        if self.weight_grid != 'uniform' and (self.weight_bits != 4 or self.group_size is not None):
            raise ValueError(f'QuantSpec.weight_grid={self.weight_grid!r}: needs weight_bits=4 and per-output-channel '
                             f'scales, got weight_bits={self.weight_bits}, group_size={self.group_size}')
        if self.act_order and self.group_size is not None:
            raise ValueError(f'QuantSpec.act_order=True: needs per-output-channel weights, not '
                             f'group_size={self.group_size}')
        for name in self.exclude + self.keep_8bit:
            if not re.fullmatch(r'blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)', name):
                raise ValueError(f'QuantSpec: layer name {name!r} is not blocks.N.(attn.qkv|attn.proj|'
                                 'mlp.fc1|mlp.fc2)')

    @classmethod
    def from_bits(cls, bits: str, **kw) -> 'QuantSpec':
        w, a = parse_bits(bits)
        return cls(weight_bits=w, act_bits=a, **kw)

    @classmethod
    def from_options(cls, **options) -> 'QuantSpec':
        """The spec from flat option values, named as on the command line (None = not given);
        ``bits='w4a8'`` is ``weight_bits=4, act_bits=8`` and contradicts either."""
        options = {k: v for k, v in options.items() if v is not None}
        bits = options.pop('bits', None)
        if bits is not None:
            check_exclusive(dict(options, bits=bits), ('bits',), ('weight_bits', 'act_bits'))
            options['weight_bits'], options['act_bits'] = parse_bits(bits)
        return build(cls, options)

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
