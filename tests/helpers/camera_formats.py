"""RGB frames laid out in camera encodings, for tests (OpenCV's I420 conversion gives the YUV samples)."""
import cv2
import numpy as np


def encode_camera(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """The array ``numpy_to_image(arr, encoding)`` takes for an RGB frame (even height and width)."""
    h, w = rgb.shape[:2]
    if encoding == 'rgb8':
        return rgb
    if encoding == 'bgr8':
        return np.ascontiguousarray(rgb[..., ::-1])
    if encoding == 'mono8':
        return np.ascontiguousarray(rgb[..., 1])
    if encoding.startswith('bayer_'):
        pattern = encoding[len('bayer_'):-1]
        mosaic = np.zeros((h, w), np.uint8)
        for (dy, dx), c in zip(((0, 0), (0, 1), (1, 0), (1, 1)), pattern):
            mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, 'rgb'.index(c)]
        return mosaic
    buf = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    y = buf[:h]
    u = buf[h:h + h // 4].reshape(h // 2, w // 2)
    v = buf[h + h // 4:].reshape(h // 2, w // 2)
    if encoding in ('nv12', 'nv21'):
        uv = np.stack([u, v] if encoding == 'nv12' else [v, u], -1).reshape(h // 2, w)
        return np.ascontiguousarray(np.concatenate([y, uv]))
    u2, v2 = np.repeat(u, 2, axis=0), np.repeat(v, 2, axis=0)
    if encoding == 'yuv422_yuy2':
        return np.ascontiguousarray(np.stack([y[:, 0::2], u2, y[:, 1::2], v2], -1).reshape(h, w, 2))
    if encoding in ('uyvy', 'yuv422'):
        return np.ascontiguousarray(np.stack([u2, y[:, 0::2], v2, y[:, 1::2]], -1).reshape(h, w, 2))
    raise ValueError(f'no test layout for {encoding}')
