"""onboard.mapindex: approximate retrieval + exact float16 re-rank agrees with brute force.

Always on a synthetic structured map (clusters of near-duplicates, like neighbouring tiles
and headings); also on the real YELL map's descriptors when ``out/localize`` has them."""
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gplq_ros.onboard import mapindex
from gplq_ros.onboard.mapindex import (DescriptorRows, GlobalIndex, IndexConfig, MapIndexError, brute_force,
                                       build_index, index_bytes, load_index, save_index, write_descriptor_rows)

faiss = pytest.importorskip('faiss', reason='faiss is not installed (pip install faiss-cpu): no map index to test')

K = 24
REAL_MAP = (Path(__file__).resolve().parents[1] / 'out/localize'
            / '2019_YELL_2_528000_4978000_image_crop2_g0.1_s8_h8_z40.safetensors')


def structured(n: int = 4000, p: int = 256, per: int = 40, seed: int = 0) -> np.ndarray:
    """Unit rows in clusters of ``per`` near-duplicates (cosine ~0.7 to their cluster's centre)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // per + 1, p)).astype(np.float32)
    x = np.repeat(centres, per, axis=0)[:n] + rng.standard_normal((n, p)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def noisy(desc: np.ndarray, n: int, cos: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = desc[rng.choice(len(desc), n, replace=False)]
    q = x + np.sqrt(1 / cos ** 2 - 1) * rng.standard_normal(x.shape).astype(np.float32) / np.sqrt(x.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def descriptor_sets():
    sets = [pytest.param('synthetic', id='synthetic')]
    sets.append(pytest.param('real', id='real', marks=pytest.mark.skipif(
        not REAL_MAP.is_file(), reason=f'{REAL_MAP.name} not built (out/localize is made by the localize benchmark)')))
    return sets


def load_set(name: str) -> np.ndarray:
    if name == 'synthetic':
        return structured()
    from safetensors.numpy import load_file
    return np.ascontiguousarray(load_file(str(REAL_MAP))['descriptors'], np.float32)


def recall(gi: GlobalIndex, desc: np.ndarray, queries: np.ndarray):
    ref, _ = brute_force(desc, queries, K)
    hits, top1 = 0, 0
    for q, r in zip(queries, ref):
        ids, scores = gi.search(q, K)
        assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == scores.shape == (K,)
        assert np.all(np.diff(scores) <= 0)
        hits += len(np.intersect1d(ids, r))
        top1 += int(ids[0] == r[0])
    return hits / (K * len(queries)), top1 / len(queries)


@pytest.mark.parametrize('name', descriptor_sets())
def test_default_index_matches_brute_force(name, tmp_path):
    desc = load_set(name)
    rows_path = tmp_path / 'rows.f16'
    write_descriptor_rows(rows_path, desc)
    built = build_index(desc, IndexConfig())
    assert built.n == len(desc) and index_bytes(built) < desc.nbytes / 4
    with DescriptorRows(rows_path, *desc.shape) as rows:
        gi = GlobalIndex(built, rows)
        # map descriptors plus small noise: the brute-force best tile comes first
        _, top1 = recall(gi, desc, noisy(desc, 50, cos=0.95))
        assert top1 == 1.0
        # frame-like mismatch (cosine 0.8 to the source tile): recall@24 against brute force
        queries = noisy(desc, 100, cos=0.8, seed=2)
        rec, _ = recall(gi, desc, queries)
        assert rec >= 0.98, f'{name}: recall@24 {rec:.4f}'
        save_index(built, tmp_path / 'map.faiss')
        again = GlobalIndex(load_index(tmp_path / 'map.faiss'), rows)
        for q in queries[:20]:
            a, b = gi.search(q, K), again.search(q, K)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])


def test_flat_is_exact_and_search_settings_change(tmp_path):
    desc = structured(1000)
    write_descriptor_rows(tmp_path / 'rows.f16', desc)
    with DescriptorRows(tmp_path / 'rows.f16', *desc.shape) as rows:
        gi = GlobalIndex(build_index(desc, IndexConfig(kind='flat', candidates=1)), rows)
        q = noisy(desc, 1, 0.8)[0]
        ids, scores = gi.search(q, 5)
        ref_ids, ref_scores = brute_force(desc, q, 5)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, atol=2e-3)     # float16 rows: <= 2^-11 for unit rows
        assert gi.with_search(candidates=3).cfg.candidates == 3
        with pytest.raises(ValueError, match='built index'):
            GlobalIndex(gi.built, rows, replace(gi.cfg, kind='ivf_pq'))


def test_descriptor_rows_read_exactly_what_was_written(tmp_path):
    desc = structured(300, p=16)
    path = tmp_path / 'rows.f16'
    write_descriptor_rows(path, desc[:100])
    write_descriptor_rows(path, desc[100:], append=True)
    assert path.stat().st_size == desc.size * 2
    with DescriptorRows(path, 300, 16) as rows:
        ids = np.array([299, 5, 6, 7, 5, 0, 150, 8, 298])       # unsorted, repeated, runs
        np.testing.assert_array_equal(rows.read(ids), desc[ids].astype('<f2'))
        assert rows.reads == 4      # runs {0}, {5..8}, {150}, {298, 299}
        assert rows.read([]).shape == (0, 16)
        with pytest.raises(IndexError):
            rows.read([300])
    with pytest.raises(MapIndexError, match='bytes'):
        DescriptorRows(path, 301, 16)


def test_config_errors_name_field_and_value():
    with pytest.raises(ValueError, match=r"kind='ivf_flat'"):
        IndexConfig(kind='ivf_flat')
    with pytest.raises(ValueError, match='nbits=8'):
        IndexConfig(kind='ivf_pqfs', nbits=8)
    assert IndexConfig(kind='ivf_pq').pq_bits == 8 and IndexConfig(kind='ivf_pqfs').pq_bits == 4
    with pytest.raises(ValueError, match='candidates=0'):
        IndexConfig(candidates=0)
    with pytest.raises(ValueError, match='m=48'):
        build_index(structured(2000), IndexConfig(kind='ivf_pq', m=48))


def test_missing_faiss_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'faiss', None)
    with pytest.raises(ImportError, match='pip install faiss-cpu'):
        mapindex.build_index(structured(100), IndexConfig(kind='flat'))
