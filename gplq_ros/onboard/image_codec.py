"""sensor_msgs/Image and CompressedImage <-> numpy, without cv_bridge.

Decoding takes any object with the Image fields (height, width, encoding, step,
is_bigendian, data), so it is tested without ROS. Every malformed message raises
``ImageFormatError`` naming the field and its value. Supported encodings:

=====================  =====  ======  ==========================================
encoding               dtype  chans   to RGB model input (OpenCV)
=====================  =====  ======  ==========================================
rgb8, bgr8             uint8  3       channel order fixed
rgba8, bgra8           uint8  4       alpha dropped
mono8, 8UC1            uint8  1       replicated to 3 channels
yuv422_yuy2, uyvy,     uint8  2       YUV 4:2:2 (Y0 U Y1 V / U Y0 V Y1), BT.601;
yuv422 (= uyvy)                       width must be even
nv12, nv21             uint8  1       Y plane (height rows) then interleaved UV
                                      (VU) at half resolution: 1.5 x height rows
                                      of ``step`` bytes; height and width even
bayer_rggb8, _bggr8,   uint8  1       demosaiced (bilinear) by its 2x2 pattern
_gbrg8, _grbg8
mono16, 16UC1          uint16 1       rejected (no defined 8-bit mapping for a colour model)
32FC1                  float  1       rejected (a map, not a camera image); used for outputs
=====================  =====  ======  ==========================================

Multi-byte data honours ``is_bigendian``; rows honour ``step`` (padding dropped).
CompressedImage: ``format`` must mention jpeg/jpg or png; decoded with OpenCV.
"""
import sys
from typing import Optional

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

ENCODINGS = {
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4),
    'bgra8': (np.uint8, 4), 'mono8': (np.uint8, 1), '8UC1': (np.uint8, 1),
    'mono16': (np.uint16, 1), '16UC1': (np.uint16, 1), '32FC1': (np.float32, 1),
    'yuv422_yuy2': (np.uint8, 2), 'uyvy': (np.uint8, 2), 'yuv422': (np.uint8, 2),
    'nv12': (np.uint8, 1), 'nv21': (np.uint8, 1),
    'bayer_rggb8': (np.uint8, 1), 'bayer_bggr8': (np.uint8, 1), 'bayer_gbrg8': (np.uint8, 1),
    'bayer_grbg8': (np.uint8, 1),
}
# encoding -> OpenCV conversion to RGB (ROS Bayer names the top-left 2x2 pattern; OpenCV names
# the pattern one pixel in: checked on a mosaiced test image)
_TO_RGB = {
    'yuv422_yuy2': cv2.COLOR_YUV2RGB_YUY2, 'uyvy': cv2.COLOR_YUV2RGB_UYVY, 'yuv422': cv2.COLOR_YUV2RGB_UYVY,
    'nv12': cv2.COLOR_YUV2RGB_NV12, 'nv21': cv2.COLOR_YUV2RGB_NV21,
    'bayer_rggb8': cv2.COLOR_BayerBG2RGB, 'bayer_bggr8': cv2.COLOR_BayerRG2RGB,
    'bayer_gbrg8': cv2.COLOR_BayerGR2RGB, 'bayer_grbg8': cv2.COLOR_BayerGB2RGB,
}
_SEMI_PLANAR = ('nv12', 'nv21')      # 1.5 x height rows in the buffer
_EVEN_WIDTH = ('yuv422_yuy2', 'uyvy', 'yuv422', 'nv12', 'nv21')
MAX_PIXELS_DEFAULT = 4096 * 4096
_NATIVE_BIG = sys.byteorder == 'big'


class ImageFormatError(ValueError):
    """A message that cannot be decoded; ``field`` and ``value`` say which part is wrong."""

    def __init__(self, field: str, value, reason: str):
        self.field = field
        self.value = value
        super().__init__(f'{field}={value!r}: {reason}')


def image_to_numpy(msg, max_pixels: Optional[int] = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """Decode an Image into (H, W) or (H, W, C) in its own encoding (a copy)."""
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise ImageFormatError('encoding', enc, f'unsupported; one of {sorted(ENCODINGS)}')
    dtype, ch = ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0:
        raise ImageFormatError('height', h, 'must be > 0')
    if w <= 0:
        raise ImageFormatError('width', w, 'must be > 0')
    if max_pixels is not None and h * w > max_pixels:
        raise ImageFormatError('height*width', f'{h}x{w}', f'{h * w} pixels exceed the limit of {max_pixels}')
    if enc in _EVEN_WIDTH and w % 2:
        raise ImageFormatError('width', w, f'must be even for {enc} (chroma shared by pixel pairs)')
    rows = h
    if enc in _SEMI_PLANAR:
        if h % 2:
            raise ImageFormatError('height', h, f'must be even for {enc} (chroma at half height)')
        rows = h * 3 // 2
    item = np.dtype(dtype).itemsize
    row = w * ch * item
    if step < row:
        raise ImageFormatError('step', step, f'must be >= width*channels*bytes = {row}')
    n = len(msg.data)
    if n != step * rows:
        what = 'step*height*3/2' if enc in _SEMI_PLANAR else 'step*height'
        raise ImageFormatError('data', f'{n} bytes', f'must be {what} = {step * rows} bytes')
    buf = np.frombuffer(msg.data, dtype=np.uint8).reshape(rows, step)[:, :row]
    arr = np.ascontiguousarray(buf).view(np.dtype(dtype).newbyteorder('>' if msg.is_bigendian else '<'))
    arr = arr.astype(dtype, copy=False)  # to native byte order
    return arr.reshape(rows, w, ch) if ch > 1 else arr.reshape(rows, w)


def to_rgb8(arr: np.ndarray, encoding: str) -> np.ndarray:
    """A decoded array in ``encoding`` -> uint8 RGB (H, W, 3) for the extractor."""
    if encoding == 'rgb8':
        return arr
    if encoding == 'bgr8':
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    if encoding == 'rgba8':
        return np.ascontiguousarray(arr[..., :3])
    if encoding == 'bgra8':
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
    if encoding in ('mono8', '8UC1'):
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    if encoding in _TO_RGB:
        return cv2.cvtColor(arr, _TO_RGB[encoding])
    raise ImageFormatError('encoding', encoding, 'cannot feed an RGB model: convert to '
                           'rgb8/bgr8/mono8 upstream (no defined 8-bit mapping)')


def image_to_rgb(msg, max_pixels: Optional[int] = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """Decode an Image to uint8 RGB (H, W, 3)."""
    if msg.encoding in ENCODINGS and ENCODINGS[msg.encoding][0] is not np.uint8:
        to_rgb8(None, msg.encoding)  # raises with the clear message before decoding
    return to_rgb8(image_to_numpy(msg, max_pixels), msg.encoding)


def compressed_to_rgb(msg, max_pixels: Optional[int] = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """Decode a CompressedImage (jpeg or png) to uint8 RGB (H, W, 3)."""
    fmt = (msg.format or '').lower()
    if 'jpeg' not in fmt and 'jpg' not in fmt and 'png' not in fmt:
        raise ImageFormatError('format', msg.format, 'must name jpeg or png')
    if len(msg.data) == 0:
        raise ImageFormatError('data', '0 bytes', 'empty compressed image')
    img = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageFormatError('data', f'{len(msg.data)} bytes', f'not decodable as {msg.format}')
    if max_pixels is not None and img.shape[0] * img.shape[1] > max_pixels:
        raise ImageFormatError('height*width', f'{img.shape[0]}x{img.shape[1]}',
                               f'{img.shape[0] * img.shape[1]} pixels exceed the limit of {max_pixels}')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def numpy_to_image(arr: np.ndarray, encoding: str, header=None, step: Optional[int] = None,
                   bigendian: bool = False, msg=None):
    """Encode an array as sensor_msgs/Image (``step`` > row bytes pads each row); nv12/nv21
    arrays are the whole buffer, (1.5 x height, width)."""
    if encoding not in ENCODINGS:
        raise ImageFormatError('encoding', encoding, f'unsupported; one of {sorted(ENCODINGS)}')
    dtype, ch = ENCODINGS[encoding]
    arr = np.asarray(arr)
    want = arr.shape[:2] + ((ch,) if ch > 1 else ())
    if arr.dtype != dtype or arr.shape != want or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageFormatError('array', f'{arr.dtype}{arr.shape}',
                               f'{encoding} needs {np.dtype(dtype).name} with {ch} channel(s)')
    h, w = arr.shape[:2]
    rows = h
    if encoding in _SEMI_PLANAR:
        if h % 3 or w % 2 or (h * 2 // 3) % 2:
            raise ImageFormatError('array', f'{arr.dtype}{arr.shape}',
                                   f'{encoding} needs (1.5 x even height, even width)')
        h = h * 2 // 3
    row = w * ch * np.dtype(dtype).itemsize
    step = row if step is None else int(step)
    if step < row:
        raise ImageFormatError('step', step, f'must be >= {row}')
    data = np.ascontiguousarray(arr).astype(np.dtype(dtype).newbyteorder('>' if bigendian else '<'))
    buf = np.zeros((rows, step), np.uint8)
    buf[:, :row] = data.view(np.uint8).reshape(rows, row)
    if msg is None:
        msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding = h, w, encoding
    msg.is_bigendian = int(bigendian)
    msg.step = step
    msg.data = buf.tobytes()
    return msg


def rgb_to_compressed(image_rgb: np.ndarray, fmt: str = 'jpeg', header=None, quality: int = 90):
    """Encode uint8 RGB as sensor_msgs/CompressedImage (jpeg or png)."""
    if fmt not in ('jpeg', 'png'):
        raise ImageFormatError('format', fmt, 'must be jpeg or png')
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == 'jpeg' else []
    ok, buf = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png',
                           cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ImageFormatError('image', f'{image_rgb.dtype}{image_rgb.shape}', f'{fmt} encoding failed')
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = fmt
    msg.data = buf.tobytes()
    return msg
