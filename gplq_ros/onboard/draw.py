"""Pictures of the outputs (numpy + OpenCV): feature PCA, boundary maps, corners, panels,
the similarity matrix of the demo, and the camera | boundary | corners frames of bag
reports."""
from typing import List

import cv2
import numpy as np

from gplq_ros.onboard.heads import l2_normalize

PANEL_H = 360


def tile(images: List[np.ndarray], height: int) -> np.ndarray:
    """Resize to a common height and concatenate horizontally with 4 px gaps."""
    parts = []
    for im in images:
        w = max(1, int(round(im.shape[1] * height / im.shape[0])))
        parts.append(cv2.resize(im, (w, height), interpolation=cv2.INTER_AREA))
        parts.append(np.full((height, 4, 3), 255, np.uint8))
    return np.concatenate(parts[:-1], axis=1)


def pca_rgb(tokens: np.ndarray) -> np.ndarray:
    """First three principal components of (gh, gw, C) unit tokens as uint8 RGB."""
    gh, gw, c = tokens.shape
    x = l2_normalize(tokens.reshape(-1, c))
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    p = x @ vt[:3].T
    lo, hi = np.percentile(p, 1, axis=0), np.percentile(p, 99, axis=0)
    p = np.clip((p - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    return (p.reshape(gh, gw, 3) * 255).astype(np.uint8)


def label(img: np.ndarray, text: str) -> np.ndarray:
    img = img.copy()
    cv2.putText(img, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(img, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def boundary_rgb(out, scale: float) -> np.ndarray:
    return cv2.applyColorMap((np.clip(out.boundary_full / max(scale, 1e-6), 0, 1) * 255).astype(np.uint8),
                             cv2.COLORMAP_INFERNO)[..., ::-1]


def draw_corners(img: np.ndarray, out) -> np.ndarray:
    img = img.copy()
    r = max(3, int(min(img.shape[:2]) / 80))
    for i, (x, y) in enumerate(out.corners_px):
        color = (255, 40, 40) if i < 10 else (255, 220, 0)
        cv2.circle(img, (int(x), int(y)), r, color, max(1, r // 2), cv2.LINE_AA)
    return img


def draw_boundary_corners(image: np.ndarray, out, text: str, scale: float = 0.6) -> np.ndarray:
    """Boundary map (fixed colour scale, comparable between models) with corners on top."""
    return label(draw_corners(boundary_rgb(out, scale), out), text)


def draw_panel(image: np.ndarray, out) -> np.ndarray:
    h, w = image.shape[:2]
    pca = cv2.resize(pca_rgb(out.tokens), (w, h), interpolation=cv2.INTER_NEAREST)
    bmax = float(out.boundary.max())
    return tile([label(image, 'input'), label(pca, 'feature PCA'),
                 label(boundary_rgb(out, bmax), f'boundary (max {bmax:.2f})'),
                 label(draw_corners(image, out), f'{len(out.corners_px)} Harris corners')], PANEL_H)


def similarity_png(names, sim: np.ndarray, flip: np.ndarray) -> np.ndarray:
    n = len(names)
    cell, left, top = 70, 300, 40
    img = np.full((top + cell * n + 30, left + cell * (n + 1) + 10, 3), 255, np.uint8)
    cv2.putText(img, 'VLAD cosine (last column: vs own flip)', (10, 26),
                cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    full = np.concatenate([sim, flip[:, None]], axis=1)
    for i in range(n):
        cv2.putText(img, names[i][:34], (6, top + cell * i + cell // 2 + 5),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for j in range(n + 1):
            v = float(full[i, j])
            shade = int(255 * (1 - np.clip(v, 0, 1)))
            x0, y0 = left + cell * j, top + cell * i
            cv2.rectangle(img, (x0, y0), (x0 + cell - 2, y0 + cell - 2), (255, shade, shade), -1)
            cv2.putText(img, f'{v:.2f}', (x0 + 12, y0 + cell // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX,
                        0.5, (0, 0, 0) if v < 0.6 else (255, 255, 255), 1, cv2.LINE_AA)
    return img


def frame_picture(rgb, boundary, corners):
    h, w = rgb.shape[:2]
    b = cv2.resize(boundary, (w, h), interpolation=cv2.INTER_LINEAR)
    b = np.clip(b / max(float(b.max()), 1e-6), 0, 1)   # scaled to the frame's maximum for display
    heat = cv2.applyColorMap((b * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    dots = rgb.copy()
    for u, v, _ in (corners if corners is not None else []):
        cv2.circle(dots, (int(round(u)), int(round(v))), 6, (255, 40, 40), 2)
    return np.concatenate([rgb, heat, dots], axis=1)
