"""Integer packing (numpy only, so the onboard runtime can unpack without torch).

Signed 4-bit codes in [-8, 7] are stored two per byte, little-nibble first: byte
``b = (c[2i] & 0xF) | ((c[2i+1] & 0xF) << 4)``. An odd count is padded with one zero code.
"""
import numpy as np


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """int8 codes in [-8, 7] (any shape) -> flat uint8 of ceil(n/2) bytes."""
    c = np.asarray(codes).reshape(-1)
    if c.size and (c.min() < -8 or c.max() > 7):
        raise ValueError(f'int4 codes must lie in [-8, 7], got [{c.min()}, {c.max()}]')
    return _pack_nibbles((c.astype(np.int16) & 0xF).astype(np.uint8))


def _pack_nibbles(u: np.ndarray) -> np.ndarray:
    """Flat uint8 values in [0, 15] -> two per byte, little nibble first (an odd count padded with 0)."""
    if u.size % 2:
        u = np.concatenate([u, np.zeros(1, np.uint8)])
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, count: int) -> np.ndarray:
    """flat uint8 -> the first ``count`` signed int8 codes."""
    p = np.asarray(packed, np.uint8).reshape(-1)
    if count > 2 * p.size or count < 0:
        raise ValueError(f'cannot unpack {count} codes from {p.size} bytes')
    out = np.empty(2 * p.size, np.int8)
    lo, hi = (p & 0xF).astype(np.int8), (p >> 4).astype(np.int8)
    out[0::2] = np.where(lo > 7, lo - 16, lo)
    out[1::2] = np.where(hi > 7, hi - 16, hi)
    return out[:count]


def pack_uint4(values: np.ndarray) -> np.ndarray:
    """Unsigned values in [0, 15] (any shape) -> flat uint8 of ceil(n/2) bytes, little nibble first."""
    v = np.asarray(values).reshape(-1)
    if v.size and (v.min() < 0 or v.max() > 15):
        raise ValueError(f'uint4 values must lie in [0, 15], got [{v.min()}, {v.max()}]')
    return _pack_nibbles(v.astype(np.uint8))


def unpack_uint4(packed: np.ndarray, count: int) -> np.ndarray:
    """flat uint8 -> the first ``count`` unsigned values in [0, 15] (uint8)."""
    p = np.asarray(packed, np.uint8).reshape(-1)
    if count > 2 * p.size or count < 0:
        raise ValueError(f'cannot unpack {count} values from {p.size} bytes')
    out = np.empty(2 * p.size, np.uint8)
    out[0::2], out[1::2] = p & 0xF, p >> 4
    return out[:count]
