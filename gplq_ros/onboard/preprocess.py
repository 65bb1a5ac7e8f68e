"""Input policy for the DINOv2 extractor (numpy + OpenCV only; shared by torch and ORT paths).

Policy: the image is resized (aspect ratio kept) so that its long side is ``long_side``
pixels, then each side is rounded to the nearest multiple of the patch size (14), never
below one patch. A 640x480 camera frame at ``long_side=224`` becomes 224x168 (16x12
patches). An explicit ``size=(h, w)`` is rounded the same way. Pixels are scaled to
[0, 1] and normalized with the ImageNet mean/std that DINOv2 was trained with
(timm ``pretrained_cfg`` of ``vit_small_patch14_dinov2``).
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

PATCH = 14
ONBOARD_INPUT_HW = (168, 224)   # graph input of the onboard graphs: 640x480 cameras at long side 224
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# (x / 255 - mean) / std as one multiply-add per channel
_SCALE = (np.float32(1.0 / 255.0) / IMAGENET_STD).astype(np.float32)
_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def _round_to_patch(v: float) -> int:
    return max(PATCH, int(round(v / PATCH)) * PATCH)


def resolve_size(height: int, width: int, long_side: Optional[int] = 224,
                 size: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
    """Network input size (h, w), both multiples of 14, for an image of ``height x width``."""
    if height <= 0 or width <= 0:
        raise ValueError(f'image size must be positive, got height={height} width={width}')
    if size is not None:
        h, w = size
        if h <= 0 or w <= 0:
            raise ValueError(f'size must be positive, got size={size}')
        return _round_to_patch(h), _round_to_patch(w)
    if long_side is None or long_side < PATCH:
        raise ValueError(f'long_side must be >= {PATCH}, got long_side={long_side}')
    scale = long_side / max(height, width)
    return _round_to_patch(height * scale), _round_to_patch(width * scale)


@dataclass(frozen=True)
class Prepared:
    """A network input and how it maps back onto the original image."""

    tensor: np.ndarray      # float32 (1, 3, h, w), ImageNet-normalized
    orig_hw: Tuple[int, int]
    input_hw: Tuple[int, int]

    @property
    def grid_hw(self) -> Tuple[int, int]:
        return self.input_hw[0] // PATCH, self.input_hw[1] // PATCH


def prepare(image_rgb: np.ndarray, long_side: Optional[int] = 224,
            size: Optional[Tuple[int, int]] = None) -> Prepared:
    """uint8 RGB (H, W, 3) -> normalized float32 NCHW at the policy's input size."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError('image must be uint8 RGB of shape (H, W, 3), got '
                         f'dtype={image_rgb.dtype} shape={image_rgb.shape}')
    h0, w0 = image_rgb.shape[:2]
    h, w = resolve_size(h0, w0, long_side, size)
    if (h, w) != (h0, w0):
        interp = cv2.INTER_AREA if h * w < h0 * w0 else cv2.INTER_LINEAR
        image_rgb = cv2.resize(image_rgb, (w, h), interpolation=interp)
    # written channel by channel into the NCHW tensor: 0.07 ms instead of 0.38 ms at 168x224
    x = np.empty((1, 3, h, w), np.float32)
    for c in range(3):
        np.multiply(image_rgb[:, :, c], _SCALE[c], out=x[0, c], casting='unsafe')
        x[0, c] += _OFFSET[c]
    return Prepared(x, (h0, w0), (h, w))


def read_rgb(path) -> np.ndarray:
    """Read an image file as uint8 RGB; a clear error if it cannot be decoded."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f'cannot read image file {path}')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
