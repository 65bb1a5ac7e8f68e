"""FP32 reference heads on the DINOv2 patch grid (numpy + OpenCV only).

All heads take a patch-feature map ``F`` of shape (gh, gw, C).

* **Feature normalization**: every token is L2-normalized first, so the heads see
  direction changes (semantic change), not the token-norm outliers that ViTs carry.
* **EdgeMagnitude** (GPLQ seed section 2.3): ``sqrt(grad_x^2 + grad_y^2)`` with the
  squared gradients summed over channels, gradients being central differences on the
  patch grid (one-sided at the border, as ``np.gradient``). For unit tokens each central
  difference has norm <= 1, so ``E <= sqrt(2)``; the **boundary map** is ``E / sqrt(2)``
  in [0, 1]: an absolute scale, comparable across images and between the FP32 and the
  quantized model. At input resolution it is resized bilinearly (patch centres align).
* **Corner map**: multi-channel Harris. Structure tensor
  ``M = G_sigma * sum_c [gx_c^2, gx_c gy_c; gx_c gy_c, gy_c^2]`` (Gaussian window
  sigma = 1 patch), response ``R = det M - k (trace M)^2`` with k = 0.04. Corners are
  3x3 (radius 1) local maxima with ``R > rel_threshold * max R`` and R > 0, best ``top_k``.
* **Place descriptor**: AnyLoc-style VLAD with hard assignment (nearest centre by
  cosine), residuals summed per cluster, each cluster vector L2-normalized
  (intra-normalization), the concatenation L2-normalized. Dimension K * C.
"""
from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np

SQRT2 = float(np.sqrt(2.0))


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, eps)


def _check_map(feat: np.ndarray) -> None:
    if feat.ndim != 3 or feat.shape[0] < 1 or feat.shape[1] < 1:
        raise ValueError(f'feature map must be (gh, gw, C), got shape={feat.shape}')


def feature_gradients(feat: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Central-difference gradients (gx, gy) of an (gh, gw, C) map of unit tokens."""
    _check_map(feat)
    f = l2_normalize(feat.astype(np.float32))
    gy = np.gradient(f, axis=0) if f.shape[0] > 1 else np.zeros_like(f)
    gx = np.gradient(f, axis=1) if f.shape[1] > 1 else np.zeros_like(f)
    return gx, gy


def structure_sums(gx: np.ndarray, gy: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Channel sums (gh, gw) of gx*gx, gy*gy and gx*gy: what the boundary and corner heads share."""
    return (np.einsum('ijc,ijc->ij', gx, gx), np.einsum('ijc,ijc->ij', gy, gy),
            np.einsum('ijc,ijc->ij', gx, gy))


def edge_magnitude(feat: np.ndarray) -> np.ndarray:
    """EdgeMagnitude (gh, gw) = sqrt(sum_c gx^2 + gy^2) of the unit-token feature map."""
    sxx, syy, _ = structure_sums(*feature_gradients(feat))
    return np.sqrt(sxx + syy)


def boundary_from_sums(sxx: np.ndarray, syy: np.ndarray) -> np.ndarray:
    return np.clip(np.sqrt(sxx + syy) / SQRT2, 0.0, 1.0).astype(np.float32)


def boundary_map(feat: np.ndarray) -> np.ndarray:
    """Boundary map on the patch grid, ``EdgeMagnitude / sqrt(2)`` in [0, 1]."""
    sxx, syy, _ = structure_sums(*feature_gradients(feat))
    return boundary_from_sums(sxx, syy)


def upsample(grid_map: np.ndarray, out_hw: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a patch-grid map to (h, w) pixels (half-pixel aligned)."""
    return cv2.resize(grid_map.astype(np.float32), (out_hw[1], out_hw[0]),
                      interpolation=cv2.INTER_LINEAR)


def harris_response(feat: np.ndarray, k: float = 0.04, sigma: float = 1.0) -> np.ndarray:
    """Multi-channel Harris response R (gh, gw) on the patch grid."""
    return harris_from_sums(*structure_sums(*feature_gradients(feat)), k, sigma)


def harris_from_sums(sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray, k: float = 0.04,
                     sigma: float = 1.0) -> np.ndarray:
    if sigma > 0:
        ks = 2 * int(np.ceil(2 * sigma)) + 1
        blur = [cv2.GaussianBlur(s, (ks, ks), sigma, borderType=cv2.BORDER_REPLICATE)
                for s in (sxx, syy, sxy)]
        sxx, syy, sxy = blur
    det = sxx * syy - sxy * sxy
    tr = sxx + syy
    return (det - k * tr * tr).astype(np.float32)


@dataclass(frozen=True)
class Corners:
    """Top-k Harris corners: patch-grid (row, col) and response, best first."""

    rows: np.ndarray       # int32 (n,)
    cols: np.ndarray       # int32 (n,)
    response: np.ndarray   # float32 (n,)

    def to_pixels(self, grid_hw: Tuple[int, int], image_hw: Tuple[int, int]) -> np.ndarray:
        """(n, 2) float32 pixel (x, y) of the patch centres in an image of ``image_hw``."""
        sy = image_hw[0] / grid_hw[0]
        sx = image_hw[1] / grid_hw[1]
        return np.stack([(self.cols + 0.5) * sx, (self.rows + 0.5) * sy], axis=1).astype(np.float32)


def top_corners(response: np.ndarray, top_k: int = 50, radius: int = 1,
                rel_threshold: float = 0.01) -> Corners:
    """Non-max-suppressed local maxima of a Harris response, best ``top_k`` first."""
    if top_k < 1 or radius < 1:
        raise ValueError(f'top_k and radius must be >= 1, got top_k={top_k} radius={radius}')
    r = response.astype(np.float32)
    size = 2 * radius + 1
    dil = cv2.dilate(r, np.ones((size, size), np.uint8), borderType=cv2.BORDER_CONSTANT,
                     borderValue=-np.inf)
    rmax = float(r.max()) if r.size else 0.0
    mask = (r >= dil) & (r > 0) & (r > rel_threshold * rmax)
    rows, cols = np.nonzero(mask)
    vals = r[rows, cols]
    order = np.argsort(-vals, kind='stable')[:top_k]
    return Corners(rows[order].astype(np.int32), cols[order].astype(np.int32),
                   vals[order].astype(np.float32))


def vlad(features: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """AnyLoc-style hard-assignment VLAD of (N, C) features over (K, C) unit centres."""
    if features.ndim != 2 or centers.ndim != 2 or features.shape[1] != centers.shape[1]:
        raise ValueError('vlad needs features (N, C) and centers (K, C) with equal C, got '
                         f'features={features.shape} centers={centers.shape}')
    x = l2_normalize(features.astype(np.float32))
    c = centers.astype(np.float32)
    assign = np.argmax(x @ c.T, axis=1)
    k = c.shape[0]
    onehot = (assign[None, :] == np.arange(k)[:, None]).astype(np.float32)   # (K, N)
    out = onehot @ x                                                          # per-cluster sums, one matmul
    counts = onehot.sum(axis=1)
    out -= counts[:, None] * c
    out = l2_normalize(out, axis=1)
    out[counts == 0] = 0.0
    return l2_normalize(out.reshape(-1), axis=0).astype(np.float32)
