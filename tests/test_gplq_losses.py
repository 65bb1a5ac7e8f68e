"""GPLQ loss terms on synthetic maps (torch, no model)."""
import numpy as np
import pytest
import torch

from gplq_ros.offline.config import LossConfig, alpha_weights
from gplq_ros.offline.losses import GPLQLoss, corner_mask, edge_magnitude, spatial_weight
from gplq_ros.onboard import heads


def two_regions(b=1, gh=8, gw=8, c=16, split=4):
    g = torch.Generator().manual_seed(0)
    a, d = torch.randn(c, generator=g), torch.randn(c, generator=g)
    f = torch.empty(b, gh, gw, c)
    f[:, :, :split], f[:, :, split:] = a, d
    return f


def test_edge_magnitude_matches_the_heads_definition():
    f = np.random.default_rng(0).normal(size=(6, 9, 32)).astype(np.float32)
    got = edge_magnitude(torch.from_numpy(f)[None])[0].numpy()
    # unit tokens: magnitudes <= 2 sqrt(2), where 1e-6 is 4 or more float32 ulps (other summation order)
    np.testing.assert_allclose(got, heads.edge_magnitude(f), atol=1e-6)


def test_all_terms_zero_when_quantized_equals_fp():
    cfg = LossConfig()
    fp = [torch.randn(2, 8, 8, 16) for _ in range(12)]
    loss = GPLQLoss(cfg)
    loss.fit_pca(fp[-1])
    terms = loss(fp, [f.clone() for f in fp], [torch.tensor(0.0)])
    for k, v in terms.items():
        assert float(v) == 0.0, k


def test_spatial_weight_makes_edge_errors_cost_more():
    f = two_regions()
    w = spatial_weight(f, beta=2.0)
    assert float(w[0, 0, 3]) == pytest.approx(3.0) and float(w[0, 0, 0]) == pytest.approx(1.0)
    noise = torch.zeros_like(f)
    at_edge, flat = noise.clone(), noise.clone()
    at_edge[:, :, 3] = 0.1
    flat[:, :, 0] = 0.1
    cfg = LossConfig(beta=2.0, lambda_corner=0, lambda_edge=0, lambda_reg=0)
    fp = [f] * 12
    e = float(GPLQLoss(cfg)(fp, [f + at_edge] * 12, [])['mimic'])
    n = float(GPLQLoss(cfg)(fp, [f + flat] * 12, [])['mimic'])
    assert e > 2.5 * n                 # weight 1 + beta = 3 at the border vs 1: the ratio is 3
    cfg0 = LossConfig(beta=0.0, lambda_corner=0, lambda_edge=0, lambda_reg=0)
    assert float(GPLQLoss(cfg0)(fp, [f + at_edge] * 12, [])['mimic']) == pytest.approx(
        float(GPLQLoss(cfg0)(fp, [f + flat] * 12, [])['mimic']))


def test_corner_and_edge_terms_look_only_at_their_positions():
    g = torch.Generator().manual_seed(1)
    a, d = torch.randn(8, generator=g), torch.randn(8, generator=g)
    f = a.repeat(1, 16, 16, 1).clone()
    f[:, 5:, 7:] = d                               # an L-shaped border, corner near (5, 7)
    m = corner_mask(f, top_k=1)
    r, c = [int(i) for i in torch.nonzero(m[0])[0]]
    assert abs(r - 5) <= 1 and abs(c - 7) <= 1
    cfg = LossConfig(lambda_reg=0, corner_top_k=1)
    fp = [f] * 12
    far = f.clone()
    far[:, 14, 1] += 1.0                           # error far from the border and the corner
    terms = GPLQLoss(cfg)(fp, [far] * 12, [])
    assert float(terms['corner']) == 0.0 and float(terms['edge']) == 0.0 and float(terms['mimic']) > 0
    near = f.clone()
    near[:, r, c] += 1.0
    terms = GPLQLoss(cfg)(fp, [near] * 12, [])
    assert float(terms['corner']) > 0.0 and float(terms['edge']) > 0.0


def test_reg_term_and_alpha_schedule():
    cfg = LossConfig(lambda_corner=0, lambda_edge=0, lambda_reg=0.5)
    fp = [torch.randn(1, 4, 4, 8)] * 12
    terms = GPLQLoss(cfg)(fp, fp, [torch.tensor(0.2), torch.tensor(0.4)])
    assert float(terms['reg']) == pytest.approx(0.5 * 0.3)
    a = alpha_weights('depth', 12)
    assert sum(a) == pytest.approx(1.0) and a[11] == pytest.approx(12 * a[0])
    assert alpha_weights('uniform', 4) == [0.25] * 4


def test_pca_keeps_requested_variance():
    x = torch.randn(1, 16, 16, 32) * torch.linspace(5, 0.1, 32)
    loss = GPLQLoss(LossConfig(pca_variance=0.6))
    k = loss.fit_pca(x)
    mean, basis = loss.pca
    kept = (((x.reshape(-1, 32) - mean) @ basis) ** 2).sum() / ((x.reshape(-1, 32) - mean) ** 2).sum()
    assert 0.6 <= float(kept) and basis.shape == (32, k) and k < 32
