"""Fidelity metrics of a quantized model against FP32 (numpy + OpenCV), one definition
each, shared by the offline fidelity report, the monitor node and bag evaluation.

* token cosine: mean over patches of cos(A_fp, A_q);
* SSIM of two maps in [0, 1] (Gaussian window sigma 1.5, C1 = (0.01)^2, C2 = (0.03)^2);
* corner repeatability: fraction of FP32 corners with a quantized corner within
  ``radius`` (Chebyshev distance), in whatever unit the coordinates are given (patch
  cells offline, camera pixels with a one-cell radius onboard).
"""
import cv2
import numpy as np

__all__ = ['token_cosine', 'ssim', 'corner_repeatability']


def token_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    k = 2 * int(np.ceil(3 * sigma)) + 1

    def blur(x):
        return cv2.GaussianBlur(x, (k, k), sigma, borderType=cv2.BORDER_REFLECT)
    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a ** 2
    sbb = blur(b * b) - mu_b ** 2
    sab = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return float(s.mean())


def corner_repeatability(ref_xy: np.ndarray, got_xy: np.ndarray, radius: float) -> float:
    """Fraction of the (N, 2) reference corners with a (M, 2) corner within ``radius``."""
    ref_xy = np.asarray(ref_xy, np.float64).reshape(-1, 2)
    got_xy = np.asarray(got_xy, np.float64).reshape(-1, 2)
    if len(ref_xy) == 0:
        return 1.0
    if len(got_xy) == 0:
        return 0.0
    d = np.abs(ref_xy[:, None, :] - got_xy[None, :, :]).max(axis=2)
    return float(np.mean(d.min(axis=1) <= radius))
