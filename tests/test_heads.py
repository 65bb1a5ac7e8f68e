"""FP32 reference heads and the input policy: pure numpy, no model, no ROS."""
import numpy as np
import pytest

from gplq_ros.onboard import heads
from gplq_ros.onboard.preprocess import prepare, resolve_size
from gplq_ros.onboard.vocabulary import VocabError, VocabMeta, Vocabulary, spherical_kmeans


def two_region_map(gh=8, gw=10, split=4, c=16, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=c), rng.normal(size=c)
    f = np.empty((gh, gw, c), np.float32)
    f[:, :split], f[:, split:] = a, b
    return f


def test_boundary_map_peaks_on_the_region_border_only():
    b = heads.boundary_map(two_region_map(split=4))
    assert b.dtype == np.float32 and b.shape == (8, 10)
    assert 0.0 <= b.min() and b.max() <= 1.0
    assert np.all(b[:, 3] > 0.1) and np.all(b[:, 4] > 0.1)  # the two columns at the border
    np.testing.assert_allclose(np.delete(b, [3, 4], axis=1), 0.0, atol=1e-6)   # equal tokens: exactly 0


def test_boundary_scale_is_absolute():
    # opposite unit tokens on either side of the border: the largest possible step
    f = np.zeros((4, 6, 2), np.float32)
    f[:, :3, 0], f[:, 3:, 0] = 1.0, -1.0
    b = heads.boundary_map(f)
    np.testing.assert_allclose(b[:, 2:4], 1.0 / np.sqrt(2.0), rtol=1e-6)     # float32 rounding: 1e-6 is ~12 ulps here
    assert heads.boundary_map(f * 100).max() == pytest.approx(b.max())  # token norm ignored


def test_upsample_keeps_patch_centres():
    g = np.arange(12, dtype=np.float32).reshape(3, 4)
    up = heads.upsample(g, (42, 56))
    assert up.shape == (42, 56)
    # the 2x2 pixels around patch (1, 2)'s centre (21, 35) average to its value (linear field: exact up to
    # float32 rounding: ulp 4.8e-7 at 6)
    assert up[20:22, 34:36].mean() == pytest.approx(g[1, 2], abs=1e-5)
    assert up[20, 34] != pytest.approx(g[1, 2])


def test_harris_finds_the_corner_of_a_quadrant():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=8), rng.normal(size=8)
    f = np.empty((16, 16, 8), np.float32)
    f[:] = a
    f[5:, 7:] = b  # an L-shaped border with its corner near (5, 7)
    c = heads.top_corners(heads.harris_response(f), top_k=5)
    assert abs(int(c.rows[0]) - 5) <= 1 and abs(int(c.cols[0]) - 7) <= 1
    # a straight edge is not a corner: no positive response along it away from the corner
    r = heads.harris_response(two_region_map(gh=16, gw=16, split=8))
    assert r.max() <= 1e-6          # gy = 0: det = 0, R = -k tr^2 <= 0 (1e-6: float slack)


def test_top_corners_suppress_neighbours_and_sort():
    r = np.random.default_rng(2).random((20, 30)).astype(np.float32)
    c = heads.top_corners(r, top_k=40, radius=2)
    assert len(c.rows) <= 40 and np.all(np.diff(c.response) <= 0)
    for i in range(len(c.rows)):
        for j in range(i + 1, len(c.rows)):
            assert max(abs(c.rows[i] - c.rows[j]), abs(c.cols[i] - c.cols[j])) > 2
    px = c.to_pixels((20, 30), (200, 300))
    assert np.all((px[:, 0] > 0) & (px[:, 0] < 300) & (px[:, 1] > 0) & (px[:, 1] < 200))
    with pytest.raises(ValueError, match='top_k'):
        heads.top_corners(r, top_k=0)


def test_vlad_properties():
    rng = np.random.default_rng(3)
    centers = heads.l2_normalize(rng.normal(size=(4, 8))).astype(np.float32)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    d = heads.vlad(x, centers)
    assert d.shape == (32,) and d.dtype == np.float32
    assert np.linalg.norm(d) == pytest.approx(1.0, abs=1e-5)                  # L2-normalized: float32 rounding
    np.testing.assert_allclose(heads.vlad(x[::-1], centers), d, atol=1e-6)  # order-free
    y = rng.normal(size=(50, 8)).astype(np.float32)
    assert float(d @ heads.vlad(y, centers)) < 0.9
    with pytest.raises(ValueError, match='equal C'):
        heads.vlad(x, centers[:, :4])


def test_spherical_kmeans_recovers_planted_clusters():
    rng = np.random.default_rng(4)
    true = heads.l2_normalize(rng.normal(size=(3, 16)))
    x = np.concatenate([t + 0.05 * rng.normal(size=(100, 16)) for t in true])
    c = spherical_kmeans(x, 3, seed=0)
    # a centre of 100 points with 0.05 noise per axis: ~0.05 sqrt(16 / 100) = 0.02 off, cosine ~0.9998
    assert np.all((c @ true.T).max(axis=0) > 0.99)
    with pytest.raises(ValueError, match='k='):
        spherical_kmeans(x[:2], 3)


def _vocab(k=4):
    meta = VocabMeta('dinov2_vits14', 'ab' * 32, 9, 'value', 224, k, 0, 100)
    return Vocabulary(np.eye(k, 8, dtype=np.float32), meta)


def test_vocabulary_roundtrip_and_refusals(tmp_path):
    path = tmp_path / 'v.safetensors'
    _vocab().save(path)
    got = Vocabulary.load(path, expect_weights_sha256='ab' * 32)
    np.testing.assert_array_equal(got.centers, np.eye(4, 8))
    assert got.meta == _vocab().meta
    assert (tmp_path / 'v.json').is_file()
    with pytest.raises(FileExistsError, match='force'):
        _vocab().save(path)
    with pytest.raises(VocabError, match='other|built for'):
        Vocabulary.load(path, expect_weights_sha256='cd' * 32)
    bad = _vocab()
    bad.meta.version = 99
    bad.save(path, force=True)
    with pytest.raises(VocabError, match='version=99'):
        Vocabulary.load(path)
    with pytest.raises(VocabError, match='gplq_vocab'):
        Vocabulary.load(tmp_path / 'missing.safetensors')


@pytest.mark.parametrize('hw,long_side,size,want', [
    ((480, 640), 224, None, (168, 224)),
    ((2472, 2299), 448, None, (448, 420)),
    ((100, 100), 224, None, (224, 224)),
    ((480, 640), None, (200, 300), (196, 294)),
    ((10, 2000), 224, None, (14, 224)),
])
def test_resize_policy(hw, long_side, size, want):
    assert resolve_size(*hw, long_side=long_side, size=size) == want


def test_prepare_normalizes_and_rejects_bad_input():
    img = np.full((480, 640, 3), 255, np.uint8)
    p = prepare(img)
    assert p.tensor.shape == (1, 3, 168, 224) and p.tensor.dtype == np.float32
    assert p.grid_hw == (12, 16)
    np.testing.assert_allclose(p.tensor[0, :, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) /
                               np.array([0.229, 0.224, 0.225]), rtol=1e-5)
    with pytest.raises(ValueError, match='uint8 RGB'):
        prepare(img[..., 0])
    with pytest.raises(ValueError, match='long_side'):
        resolve_size(10, 10, long_side=5)
