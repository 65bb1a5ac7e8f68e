"""The GPLQ artifact: one safetensors file, versioned, no pickle (numpy only).

Tensors:
  ``fp/<timm name>``      FP32 parameters that are not quantized (patch embedding,
                          norms, LayerScales, biases, position embedding, CLS token,
                          and the weights of excluded layers);
  ``w/<layer>.int4``      packed signed 4-bit codes (two per byte, see onboard.packing),
  ``w/<layer>.int8``      or int8 codes for layers at 5-8 bits;
  ``w/<layer>.scales``    float32 (out, n_groups) symmetric scales;
  ``w/<layer>.mult``      (version 2, grid 'multiplier') packed unsigned 4-bit integer
                          multipliers k in [1, 15], one per group of ``grid_group`` input
                          channels, row-major (out, in / grid_group);
  ``w/<layer>.codebook``  (version 2, grid 'codebook') int8 (out, 16): each output channel's
                          16 levels, ascending; the 4-bit code c selects level c + 8.
  ``a/<quantizer>.scale`` / ``.zero_point``  float32 activation qparams (zero-points are
                          integers stored as float).
Header metadata ``gplq_ros`` (JSON): format, version, backbone, weights_sha256, spec,
calibration config, per-layer bits/group/shape (and ``grid``), data fingerprint, metrics,
and ``checksum``: sha256 over every tensor's name, dtype, shape and bytes (sorted by name).

4-bit grids (a layer's ``grid`` in the metadata; absent = 'uniform'): 'uniform' is
``w = s * q`` with q the 4-bit code; 'multiplier' is ``w = s_c * k_g * q`` (per output channel
scale s_c, per group integer k_g in [1, 15], q in [-8, 7]: k_g * q is an int8 value in
[-120, 105]); 'codebook' is ``w = s_c * L_c[q + 8]`` with L_c 16 int8 levels per output
channel. Both new grids decode exactly into per-output-channel int8 weights
(``layer_int8``), so the graph and its int8 kernels are those of the uniform grid. Version 1
files hold uniform layers only; a file with a 'multiplier' or 'codebook' layer is version 2
(an older gplq_ros refuses it instead of decoding it wrongly).
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
from safetensors.numpy import load_file, save_file

from gplq_ros.onboard.fileformat import read_versioned_meta
from gplq_ros.onboard.packing import unpack_int4, unpack_uint4

FORMAT = 'gplq_ros.artifact'
PACKED_PREFIX = 'gplq_packed:'  # ONNX initializers the engine fills from an artifact's codes
VERSION = 1             # uniform layers only
GRID_VERSION = 2        # a layer with a 'multiplier' or 'codebook' grid
READS = (VERSION, GRID_VERSION)
GRIDS = ('uniform', 'multiplier', 'codebook')
MULT_RANGE = (1, 15)
CODEBOOK_LEVELS = 16


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
    grids = {info.get('grid', 'uniform') for info in (meta.get('layers') or {}).values()}
    version = VERSION if grids <= {'uniform'} else GRID_VERSION
    meta = dict(meta, format=FORMAT, version=version, checksum=checksum)
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


def layer_grid(tensors: Dict[str, np.ndarray], name: str, info: dict) -> Optional[Tuple[str, np.ndarray, int]]:
    """A 4-bit layer's grid, checked against the layer: None on the uniform grid, else
    ('multiplier', k (out, in / grid_group) uint8, grid_group) or ('codebook', levels
    (out, 16) int8, 16). A grid tensor that does not fit the layer (shape, range, order, or a
    non-per-channel scale) is refused with the field named."""
    grid = info.get('grid', 'uniform')
    if grid == 'uniform':
        return None
    if grid not in GRIDS:
        raise ArtifactError(f'layer {name}: grid={grid!r} is not one of {list(GRIDS)}')
    out_f, in_f = tuple(info['shape'])
    if info.get('bits') != 4 or f'w/{name}.int4' not in tensors:
        raise ArtifactError(f'layer {name}: grid={grid!r} needs 4-bit codes (w/{name}.int4), got bits='
                            f'{info.get("bits")!r}')
    scales = tensors.get(f'w/{name}.scales')
    if scales is None or scales.size != out_f:
        raise ArtifactError(f'layer {name}: grid={grid!r} needs one scale per output channel (w/{name}.scales '
                            f'of {out_f}), got shape {None if scales is None else scales.shape}')
    if grid == 'multiplier':
        group = info.get('grid_group')
        if not isinstance(group, int) or group <= 0 or in_f % group:
            raise ArtifactError(f'layer {name}: grid_group={group!r} does not divide the {in_f} input channels')
        packed = tensors.get(f'w/{name}.mult')
        n = out_f * (in_f // group)
        if packed is None or packed.dtype != np.uint8 or packed.size != (n + 1) // 2:
            raise ArtifactError(f'layer {name}: w/{name}.mult must hold {n} packed 4-bit multipliers '
                                f'({(n + 1) // 2} uint8 bytes), got '
                                f'{None if packed is None else (packed.dtype.name, packed.size)}')
        mult = unpack_uint4(packed, n).reshape(out_f, in_f // group)
        lo, hi = MULT_RANGE
        if mult.min() < lo or mult.max() > hi:
            raise ArtifactError(f'layer {name}: w/{name}.mult holds multipliers in [{mult.min()}, {mult.max()}]; '
                                f'they must lie in [{lo}, {hi}] (so that k * q is an int8 value)')
        return 'multiplier', mult, group
    book = tensors.get(f'w/{name}.codebook')
    if book is None or book.dtype != np.int8 or book.shape != (out_f, CODEBOOK_LEVELS):
        raise ArtifactError(f'layer {name}: w/{name}.codebook must be int8 ({out_f}, {CODEBOOK_LEVELS}), got '
                            f'{None if book is None else (book.dtype.name, book.shape)}')
    if np.any(np.diff(book.astype(np.int16), axis=1) < 0):
        raise ArtifactError(f'layer {name}: w/{name}.codebook levels must be ascending per output channel')
    return 'codebook', book, CODEBOOK_LEVELS


def layer_int8(tensors: Dict[str, np.ndarray], name: str, info: dict) -> np.ndarray:
    """The layer's weights as per-output-channel int8 values (out, in), to be multiplied by
    ``w/<layer>.scales``: the codes themselves on the uniform grid, ``k_g * q`` on the
    'multiplier' grid, ``L_c[q + 8]`` on the 'codebook' grid (``layer_grid`` checks the grid)."""
    grid = layer_grid(tensors, name, info)
    codes = layer_codes(tensors, name, info['shape'])
    if grid is None:
        return codes
    kind, values, group = grid
    if kind == 'multiplier':
        return (np.repeat(values.astype(np.int16), group, axis=1) * codes).astype(np.int8)
    return np.take_along_axis(values, codes.astype(np.int64) + CODEBOOK_LEVELS // 2, axis=1)


def read_meta(path: Path) -> dict:
    return read_versioned_meta(path, FORMAT, READS, 'artifact', 'make one with gplq_calibrate',
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
    grids = {n: i['grid'] for n, i in (meta.get('layers') or {}).items() if i.get('grid', 'uniform') != 'uniform'}
    if grids and meta.get('version') != GRID_VERSION:
        name = sorted(grids)[0]
        raise ArtifactError(f'{path}: version={meta.get("version")!r} but layer {name} has grid={grids[name]!r} '
                            f'(a version {GRID_VERSION} field)')
    if expect_backbone and meta.get('backbone') != expect_backbone:
        raise ArtifactError(f'{path}: backbone={meta.get("backbone")!r}, expected {expect_backbone!r}')
    if expect_weights_sha256 and meta.get('weights_sha256') != expect_weights_sha256:
        raise ArtifactError(f'{path}: calibrated from weights sha256={str(meta.get("weights_sha256"))[:12]}..., '
                            f'but the reference weights are {expect_weights_sha256[:12]}...')
    return tensors, meta
