"""Photometric normalization of camera frames and map tiles (numpy only; no rclpy, no torch).

The ViT's input normalization is fixed (ImageNet mean and std), so a frame's exposure, white
balance and tone curve reach its features: the same place seen darker, warmer or with another
gamma gives another descriptor and boundary map than the map tile rendered from the
orthophoto. ``grayworld`` removes most of that per frame: gray-world white balance (each
channel scaled to the mean of the three channel means), then all channels together to mean
118 and standard deviation 58 (8-bit values, about ImageNet's mean and std), clipped to
[0, 255]. Clipped highlights of an over-exposed frame stay lost.

It must be applied to both sides of a comparison: the frames (feature_node's and
monitor_node's ``photometric``) and the map tiles (``placemap.MapConfig.photometric``, recorded
in the map file). Whether it pays is measured in docs/benchmarks.md ("Lens distortion and
exposure"): it recovers white-balance, gamma and under-exposure changes, and costs accuracy
where the camera already matches the map's imagery, hence the default ``none``.
"""
import numpy as np

__all__ = ['PHOTOMETRIC_MODES', 'normalize_photometric', 'apply_photometric']

PHOTOMETRIC_MODES = ('none', 'grayworld')
TARGET_MEAN, TARGET_STD = 118.0, 58.0


def normalize_photometric(rgb: np.ndarray) -> np.ndarray:
    """``grayworld`` (see the module notes) of an (H, W, 3) uint8 image; a new uint8 image."""
    x = rgb.astype(np.float32)
    m = x.reshape(-1, 3).mean(0)
    x *= m.mean() / np.maximum(m, 1e-3)
    x = (x - x.mean()) / max(float(x.std()), 1e-3) * TARGET_STD + TARGET_MEAN
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def apply_photometric(rgb: np.ndarray, mode: str) -> np.ndarray:
    """The frame for the engine under ``mode`` (one of PHOTOMETRIC_MODES); ``none`` returns it unchanged."""
    if mode == 'none':
        return rgb
    if mode == 'grayworld':
        return normalize_photometric(rgb)
    raise ValueError(f'photometric={mode!r}: one of {list(PHOTOMETRIC_MODES)}')
