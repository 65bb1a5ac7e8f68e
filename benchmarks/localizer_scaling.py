"""Localizer time per frame against map size (retrieval: PCA projection + one product + top-k),
and the refinement alone (acquisition and tracking searches), on this CPU.

    PYTHONPATH=. .venv/bin/python benchmarks/localizer_scaling.py

Maps of N tiles with random unit descriptors (the cost does not depend on their values);
the boundary orthomap of the demo flight's size (495 x 460 at 0.5 m). Prints medians of 200
calls; timings are noisy (2 shared cores), compare within one run.
"""
import time

import numpy as np
from threadpoolctl import threadpool_limits

from gplq_ros.onboard.localize import BoundaryMatcher, Localizer
from gplq_ros.onboard.placemap import MapConfig, MapMeta, PlaceMap


def fake_map(n: int, d: int = 12288, p: int = 256) -> PlaceMap:
    rng = np.random.default_rng(0)
    desc = rng.normal(size=(n, p)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    poses = np.stack([rng.uniform(30, 200, n), -rng.uniform(30, 200, n), rng.uniform(0, 6.28, n),
                      np.full(n, 40.0)], axis=1)
    basis = np.linalg.qr(rng.normal(size=(d, p)))[0].T.astype(np.float32)
    meta = MapMeta('dinov2_vits14', '', '', '', '', '', [2472, 2299], MapConfig().__dict__ | {'heights_m': [40.0]},
                   n_tiles=n)
    g = rng.uniform(0, 1, (495, 460)).astype(np.float32)
    return PlaceMap(poses, desc, np.zeros(d, np.float32), basis, g, meta)


def median_ms(fn, n=200):
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(t))


def main():
    q = np.random.default_rng(1).normal(size=12288).astype(np.float32)
    with threadpool_limits(1):          # the node's numpy runs beside the feature node's graph runtime
        for n in (1000, 3680, 10000, 13448, 30000, 100000):
            loc = Localizer(fake_map(n))
            print(f'retrieval, {n:6d} tiles: {median_ms(lambda: loc._retrieve(q)):.2f} ms')
        m = BoundaryMatcher(fake_map(1000))
        b = np.random.default_rng(2).uniform(0, 1, (12, 16)).astype(np.float32)
        xy = np.array([100.0, -100.0])
        print(f'refinement, acquisition (12 m, +-20 deg, all heights): '
              f'{median_ms(lambda: m.refine(b, xy, 0.3, 12.0, 20.0), 50):.2f} ms')
        print(f'refinement, tracking (4 m, +-10 deg, 3 heights): '
              f'{median_ms(lambda: m.refine(b, xy, 0.3, 4.0, 10.0, 40.0)):.2f} ms')


if __name__ == '__main__':
    main()
