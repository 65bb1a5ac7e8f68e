"""Place recognition logic without a model: database/query geometry and recall@k."""
import numpy as np
import pytest

from gplq_ros.onboard.places import PlaceConfig, _window, make_places, recall_at_k


def test_recall_on_a_synthetic_database_with_known_answers():
    # 4 tiles on a row (tile 100, stride 50: neighbours overlap), one-hot descriptors
    db_centres = np.array([[50, 50], [100, 50], [150, 50], [200, 50]], float)
    db = np.eye(4)
    q_centres = np.array([[52, 50], [148, 55], [199, 45], [60, 50]], float)
    q = np.array([[1, 0, 0, 0],              # its own tile first: right
                  [0, 0, 0.5, 1],            # tile 3 (centre 200) does not contain x=148; tile 2 next: R@5 only
                  [0, 0, 0.9, 0.1],          # tile 2 (centre 150) does not contain x=199 (|dx| = 49 < 50 does)
                  [0, 1, 0, 0.2]], float)    # tile 1 (centre 100) contains x=60? |dx| = 40 < 50: right
    r = recall_at_k(db, db_centres, q, q_centres, tile=100, ks=(1, 2))
    assert r == {'R@1': 0.75, 'R@2': 1.0}
    r = recall_at_k(db, db_centres, q, q_centres + [0, 60], tile=100, ks=(1,))
    assert r == {'R@1': 0.0}                # 60 px off in y: no tile contains any query centre
    with pytest.raises(ValueError, match='no queries'):
        recall_at_k(db, db_centres, np.zeros((0, 4)), np.zeros((0, 2)), 100)


def test_places_geometry():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (1100, 1300, 3), dtype=np.uint8)
    assert np.array_equal(_window(img, 400, 300, 224, 0, 224), img[188:412, 288:512])
    cfg = PlaceConfig(tile=256, stride=128, max_blur_sigma=0, brightness=0, contrast=0, max_rot_deg=0,
                      max_shift=0, scale_range=(1, 1))
    p = make_places(img, cfg)
    assert len(p.db_images) == 9 * 7 and all(d.shape == (224, 224, 3) for d in p.db_images)
    assert len(p.queries) > 0 and np.allclose(p.query_centres, p.db_centres[p.query_place])
    for q, i in zip(p.queries, p.query_place):     # no change: the query is its database tile (0: exact in float32)
        assert np.abs(q.astype(int) - p.db_images[i].astype(int)).mean() < 3
    p2 = make_places(img, PlaceConfig(), max_places=3)
    assert len(p2.queries) == 3
    shift = np.abs(p2.query_centres - p2.db_centres[p2.query_place]).max()
    assert 0 < shift <= 0.25 * 256                  # max_shift 0.25 of a tile (224 px: at most 56)
    with pytest.raises(ValueError, match='smaller than one tile'):
        make_places(img[:100, :100], cfg)
