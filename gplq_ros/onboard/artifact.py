"""The GPLQ artifact: one safetensors file, versioned, no pickle (numpy only).

Tensors:
  ``fp/<timm name>``      FP32 parameters that are not quantized (patch embedding,
                          norms, LayerScales, biases, position embedding, CLS token,
                          and the weights of excluded layers);
  ``w/<layer>.int4``      packed signed 4-bit codes (two per byte, see onboard.packing),
  ``w/<layer>.int8``      or int8 codes for layers at 5-8 bits;
  ``w/<layer>.scales``    float32 (out, n_groups) symmetric scales;
  ``a/<quantizer>.scale`` / ``.zero_point``  float32 activation qparams (zero-points are
                          integers stored as float).
Header metadata ``gplq_ros`` (JSON): format, version, backbone, weights_sha256, spec,
calibration config, per-layer bits/group/shape, data fingerprint, metrics, and
``checksum``: sha256 over every tensor's name, dtype, shape and bytes (sorted by name).
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
from safetensors.numpy import load_file, save_file

from gplq_ros.onboard.fileformat import read_versioned_meta
from gplq_ros.onboard.packing import unpack_int4

FORMAT = 'gplq_ros.artifact'
PACKED_PREFIX = 'gplq_packed:'  # ONNX initializers the engine fills from an artifact's codes
VERSION = 1


class ArtifactError(ValueError):
    """An artifact that cannot be used; the message says why."""


def tensors_checksum(tensors: Dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        h.update(f'{name}|{t.dtype.str}|{t.shape}|'.encode())
        h.update(t.tobytes())
    return h.hexdigest()


def save_artifact(path: Path, tensors: Dict[str, np.ndarray], meta: dict, force: bool = False) -> str:
    """Write atomically; refuses to overwrite unless ``force``. Returns the checksum."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f'{path} exists; pass --force to overwrite it')
    path.parent.mkdir(parents=True, exist_ok=True)
    checksum = tensors_checksum(tensors)
    meta = dict(meta, format=FORMAT, version=VERSION, checksum=checksum)
    tmp = path.with_name(path.name + f'.tmp{os.getpid()}')
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
              metadata={'gplq_ros': json.dumps(meta, sort_keys=True)})
    tmp.replace(path)
    return checksum


def layer_codes(tensors: Dict[str, np.ndarray], name: str, shape) -> np.ndarray:
    """The int8 weight codes of one layer, (out, in): unpacked from ``w/<layer>.int4`` or
    read from ``w/<layer>.int8``."""
    packed = tensors.get(f'w/{name}.int4')
    codes = unpack_int4(packed, int(np.prod(shape))) if packed is not None else tensors[f'w/{name}.int8']
    return codes.reshape(shape).astype(np.int8, copy=False)


def read_meta(path: Path) -> dict:
    return read_versioned_meta(path, FORMAT, VERSION, 'artifact', 'make one with gplq_calibrate',
                               ArtifactError)


def load_artifact(path: Path, expect_backbone: Optional[str] = None,
                  expect_weights_sha256: Optional[str] = None) -> Tuple[Dict[str, np.ndarray], dict]:
    """(tensors, meta); refuses unknown versions, checksum and backbone mismatches."""
    meta = read_meta(path)
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise ArtifactError(f'{path}: tensor data unreadable ({e})') from None
    got = tensors_checksum(tensors)
    if got != meta.get('checksum'):
        raise ArtifactError(f'{path}: checksum mismatch (stored {str(meta.get("checksum"))[:12]}..., '
                            f'computed {got[:12]}...): the file is corrupt or was modified')
    if expect_backbone and meta.get('backbone') != expect_backbone:
        raise ArtifactError(f'{path}: backbone={meta.get("backbone")!r}, expected {expect_backbone!r}')
    if expect_weights_sha256 and meta.get('weights_sha256') != expect_weights_sha256:
        raise ArtifactError(f'{path}: calibrated from weights sha256={str(meta.get("weights_sha256"))[:12]}..., '
                            f'but the reference weights are {expect_weights_sha256[:12]}...')
    return tensors, meta
