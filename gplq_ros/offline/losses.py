"""GPLQ stage-1 loss terms (torch). Activations are patch-token maps (B, gh, gw, C).

* ``edge_magnitude``: the same EdgeMagnitude as ``onboard.heads`` (unit tokens, central
  differences, one-sided at the border), batched and in torch.
* ``mimic``: sum_i alpha_i * D_i with D_i = mean_{h,w,c} w_{h,w} (A_fp - A_q)^2 /
  P_i, w = 1 + beta * E/max E of the FP32 map, P_i = mean(A_fp_i^2) (layer power).
* ``corner``: lambda_corner * mean over the FP32 map's Harris corners of
  ||A_fp - A_q||^2 / (C * P) (final map).
* ``edge``: lambda_edge * the same over positions with E/max E > edge_threshold.
* ``reg``: lambda_reg * mean over quantizers of ||Q(A) - A||^2 / ||A||^2 (the stage-1
  loop passes detached values and applies this term's gradient per quantizer).
Sums over positions are taken as means and divided by the layer power so that the
lambdas keep their meaning for any image size and layer scale.
"""
from typing import Dict, List, Sequence

import torch

from gplq_ros.onboard.heads import harris_response, top_corners
from gplq_ros.offline.config import LossConfig, alpha_weights


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _central(f: torch.Tensor, dim: int) -> torch.Tensor:
    n = f.shape[dim]
    if n < 2:
        return torch.zeros_like(f)
    first = f.narrow(dim, 1, 1) - f.narrow(dim, 0, 1)
    last = f.narrow(dim, n - 1, 1) - f.narrow(dim, n - 2, 1)
    if n == 2:
        return torch.cat([first, last], dim)
    mid = (f.narrow(dim, 2, n - 2) - f.narrow(dim, 0, n - 2)) / 2
    return torch.cat([first, mid, last], dim)


def edge_magnitude(feat: torch.Tensor) -> torch.Tensor:
    """(B, gh, gw, C) -> (B, gh, gw) EdgeMagnitude of unit tokens."""
    f = _unit(feat.float())
    gy, gx = _central(f, 1), _central(f, 2)
    return torch.sqrt((gx * gx + gy * gy).sum(-1))


def spatial_weight(fp_map: torch.Tensor, beta: float) -> torch.Tensor:
    e = edge_magnitude(fp_map)
    e = e / e.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return 1.0 + beta * e


def corner_mask(fp_final: torch.Tensor, top_k: int) -> torch.Tensor:
    """(B, gh, gw) bool: the FP32 map's top-k Harris corners (onboard.heads definition)."""
    mask = torch.zeros(fp_final.shape[:3], dtype=torch.bool)
    for b, m in enumerate(fp_final.detach().cpu().numpy()):
        c = top_corners(harris_response(m), top_k=top_k)
        mask[b, c.rows, c.cols] = True
    return mask.to(fp_final.device)


class GPLQLoss:
    """The loss terms of ``cfg`` (``CalibConfig.loss``); ``fit_pca`` adds the PCA term."""

    def __init__(self, cfg: LossConfig, layers: int = 12):
        self.cfg = cfg
        self.alpha = alpha_weights(cfg.alpha, layers)
        self.pca = None

    def fit_pca(self, fp_final: torch.Tensor):
        """Teacher's top principal components keeping ``pca_variance`` of the variance."""
        x = fp_final.reshape(-1, fp_final.shape[-1]).float()
        mean = x.mean(0)
        _, s, vt = torch.linalg.svd(x - mean, full_matrices=False)
        var = (s ** 2) / (s ** 2).sum()
        bound = torch.tensor([self.cfg.pca_variance], device=var.device, dtype=var.dtype)
        k = int(torch.searchsorted(var.cumsum(0), bound).item()) + 1
        self.pca = (mean, vt[:k].T.contiguous())
        return k

    def __call__(self, fp: Sequence[torch.Tensor], q: Sequence[torch.Tensor],
                 reg_errors: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        mimic = fp[0].new_zeros(())
        for a, f, qq in zip(self.alpha, fp, q):
            power = (f ** 2).mean().clamp_min(1e-12)
            w = spatial_weight(f, cfg.beta) if cfg.beta > 0 else 1.0
            d = (w * ((f - qq) ** 2).mean(-1)).mean() / power
            mimic = mimic + a * d
        f, qq = fp[-1], q[-1]
        power = (f ** 2).mean().clamp_min(1e-12)
        err = ((f - qq) ** 2).mean(-1) / power  # (B, gh, gw)
        terms = {'mimic': mimic}
        if cfg.lambda_corner > 0:
            m = corner_mask(f, cfg.corner_top_k)
            terms['corner'] = cfg.lambda_corner * (err[m].mean() if m.any() else err.new_zeros(()))
        if cfg.lambda_edge > 0:
            e = edge_magnitude(f)
            m = (e / e.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]) > cfg.edge_threshold
            terms['edge'] = cfg.lambda_edge * (err[m].mean() if m.any() else err.new_zeros(()))
        if cfg.lambda_reg > 0 and reg_errors:
            terms['reg'] = cfg.lambda_reg * torch.stack(reg_errors).mean()
        if self.pca is not None:
            mean, basis = self.pca
            pf, pq = (f - mean) @ basis, (qq - mean) @ basis
            terms['pca'] = ((pf - pq) ** 2).mean() / (pf ** 2).mean().clamp_min(1e-12)
        terms['total'] = sum(terms.values())
        return terms


def as_grid(tokens: torch.Tensor, grid_hw) -> torch.Tensor:
    b, n, c = tokens.shape
    return tokens.reshape(b, grid_hw[0], grid_hw[1], c)
