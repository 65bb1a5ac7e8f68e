"""Global retrieval on large maps (issue #20): latency, memory and recall@24 of the
``onboard.mapindex`` kinds at 10^4..10^6 tiles, built from real map descriptors.

Synthetic extension: the real maps' descriptors (each file's ``descriptors``, (n, 256)
unit rows; default every ``out/localize/*.safetensors``) are the "areas". An N-tile map
concatenates copies: copy j is area j mod (number of areas) multiplied by its own random
orthogonal 256 x 256 matrix (QR of a Gaussian, seed j). A rotation keeps every inner
product inside the copy, so each copy has the real internal neighbour structure
(near-duplicates from neighbouring tiles, headings and heights), while copies are
unrelated to one another (random directions in 256-D). The last copy is truncated to N.

Queries: ``--queries`` rows of copy 0 plus isotropic Gaussian noise scaled so that the
expected cosine between a query and its source row is ``--query-cos`` (default 0.8; the
real demo frames' best cosine against the YELL map is 0.57..0.75, median 0.66, but part of
that is the frame lying between grid tiles, which moves along the map's own neighbour
structure rather than in random directions; isotropic noise is the harder case for an
approximate index at equal cosine, so 0.8 is between the two; try 0.66 for the worst case).

Each kind is built once (single thread, ``faiss.omp_set_num_threads(1)``), saved to /tmp,
loaded back (the RSS increase of loading it in a fresh process is reported), then searched with one or more
search settings through ``GlobalIndex``: index candidates plus the exact re-rank from the
float16 rows file in /tmp (read with pread; it is in the page cache here, so a cold read
from flash adds roughly preads/query x the device's random-read latency). Recall@24 is
against float32 brute force over the same N rows.

usage: python benchmarks/map_index.py [--n 10000 100000] [--kinds ...] [--large-n 1000000]
       [--large-kinds flat ivf_pqfs ivf_pq] [--areas A.safetensors ...] [--out out/map_index/table.md]
(all kinds at --n, the --large-kinds at --large-n; about 15 minutes on one core with the defaults)
"""
import os
os.environ.setdefault('OMP_NUM_THREADS', '1')   # before numpy / faiss load their thread pools

import argparse  # noqa: E402
import glob  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from gplq_ros.onboard.mapindex import (DescriptorRows, GlobalIndex, IndexConfig, build_index, index_bytes,  # noqa: E402
                                       load_index, save_index, write_descriptor_rows)

K = 24
# kind -> (build config, search settings tried on the built index)
CANDIDATES = {
    'flat': (IndexConfig(kind='flat', candidates=1), [{}]),
    'ivf_sq8': (IndexConfig(kind='ivf_sq8', candidates=2), [{'nprobe': 128}, {'nprobe': 256}]),
    'ivf_pq': (IndexConfig(kind='ivf_pq', m=64), [{'nprobe': n} for n in (128, 256, 512, 1024)]),
    'ivf_pqfs': (IndexConfig(kind='ivf_pqfs', m=128), [{'nprobe': n} for n in (256, 1024, 0)]),
    'hnsw_sq8': (IndexConfig(kind='hnsw_sq8', hnsw_m=32, ef_construction=64, candidates=2),
                 [{'ef_search': 128}, {'ef_search': 256}, {'ef_search': 512}]),
}


_LOAD_RSS = '''
import os, sys
from gplq_ros.onboard.mapindex import load_index
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
r0 = rss()
index = load_index(sys.argv[1])
print(rss() - r0)
'''


def load_rss_bytes(path: Path) -> int:
    """RSS increase of loading the index in a fresh process (faiss and numpy already imported)."""
    code = 'import faiss, numpy\n' + _LOAD_RSS
    res = subprocess.run([sys.executable, '-c', code, str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)})
    return int(res.stdout.split()[-1])


def rotation(p: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((p, p)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def make_queries(area: np.ndarray, n: int, cos: float, seed: int):
    """Rows of copy 0 (area rotated by rotation seed 0) plus noise of expected cosine ``cos``."""
    rng = np.random.default_rng(seed + 1)
    src = rng.choice(len(area), n, replace=len(area) < n)
    x = area[src] @ rotation(area.shape[1], 0).T
    sigma = np.sqrt(1.0 / cos ** 2 - 1.0)
    q = x + sigma * rng.standard_normal(x.shape).astype(np.float32) / np.sqrt(x.shape[1])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32), float(np.mean(np.sum(q * x, axis=1)))


def make_map(areas, n: int, queries: np.ndarray, path: Path):
    """Write the N-row float16 map to ``path`` copy by copy; float32 brute-force top-K of the queries."""
    p = areas[0].shape[1]
    gt_i = np.zeros((len(queries), 0), np.int64)
    gt_s = np.zeros((len(queries), 0), np.float32)
    done, j = 0, 0
    path.unlink(missing_ok=True)
    while done < n:
        a = areas[j % len(areas)]
        rows = (a[:n - done] @ rotation(p, j).T).astype(np.float32)
        write_descriptor_rows(path, rows, append=True)
        s = queries @ rows.T
        gt_i = np.concatenate([gt_i, np.tile(np.arange(done, done + len(rows)), (len(queries), 1))], 1)
        gt_s = np.concatenate([gt_s, s], 1)
        keep = np.argpartition(-gt_s, K - 1, axis=1)[:, :K]
        gt_i, gt_s = np.take_along_axis(gt_i, keep, 1), np.take_along_axis(gt_s, keep, 1)
        done += len(rows)
        j += 1
    order = np.argsort(-gt_s, axis=1)
    return np.take_along_axis(gt_i, order, 1), j


def evaluate(kind: str, n: int, rows_path: Path, p: int, queries, gt, tmp: Path):
    cfg, settings = CANDIDATES[kind]
    desc = np.memmap(rows_path, np.dtype('<f2'), 'r', shape=(n, p))
    t = time.perf_counter()
    built = build_index(desc, cfg)
    build_s = time.perf_counter() - t
    nbytes = index_bytes(built)
    ipath = tmp / f'{kind}.faiss'
    save_index(built, ipath)
    del built, desc
    rss = load_rss_bytes(ipath)
    built = load_index(ipath)
    out = []
    with DescriptorRows(rows_path, n, p) as rows:
        for setting in settings:
            gi = GlobalIndex(built, rows, replace(built.cfg, **setting))
            for q in queries[:10]:
                gi.search(q, K)
            rows.reads = 0
            ms, hits, top1 = [], 0, 0
            for q, g in zip(queries, gt):
                t = time.perf_counter()
                ids, _ = gi.search(q, K)
                ms.append((time.perf_counter() - t) * 1e3)
                hits += len(np.intersect1d(ids, g))
                top1 += int(ids[0] == g[0])
            params = {f: getattr(gi.cfg, f) for f in ('nlist', 'm', 'nbits', 'hnsw_m', 'nprobe', 'ef_search')
                      if f in _PARAMS[kind]}
            if 'nlist' in params:
                params['nlist'] = built.index.nlist
                params['nprobe'] = gi.nprobe
            if 'nbits' in params:
                params['nbits'] = gi.cfg.pq_bits
            out.append(dict(kind=kind, n=n, params=' '.join(f'{k}={v}' for k, v in params.items()),
                            cand=gi.cfg.candidates * K, build_s=build_s, bytes_tile=nbytes / n, rss_mb=rss / 2**20,
                            p50=float(np.percentile(ms, 50)), p95=float(np.percentile(ms, 95)),
                            reads=rows.reads / len(queries), recall=hits / (K * len(queries)),
                            top1=top1 / len(queries)))
            print(fmt_row(out[-1]), flush=True)
    for f in (ipath, ipath.with_name(ipath.name + '.json')):
        f.unlink(missing_ok=True)
    return out


_PARAMS = {'flat': (), 'ivf_sq8': ('nlist', 'nprobe'), 'ivf_pq': ('nlist', 'm', 'nbits', 'nprobe'),
           'ivf_pqfs': ('nlist', 'm', 'nbits', 'nprobe'), 'hnsw_sq8': ('hnsw_m', 'ef_search')}
HEADER = ('| kind | N | parameters | k\' | build s | index B/tile | load RSS MB | p50 ms | p95 ms | preads/q '
          '| recall@24 | top-1 |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')


def fmt_row(r) -> str:
    return (f"| {r['kind']} | {r['n']:.0e} | {r['params']} | {r['cand']} | {r['build_s']:.1f} | {r['bytes_tile']:.0f} "
            f"| {r['rss_mb']:.0f} | {r['p50']:.2f} | {r['p95']:.2f} | {r['reads']:.0f} | {r['recall']:.4f} "
            f"| {r['top1']:.3f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--areas', nargs='*', default=sorted(glob.glob('out/localize/*.safetensors')),
                    help='real maps whose descriptors are the areas (default: out/localize/*.safetensors)')
    ap.add_argument('--n', type=int, nargs='*', default=[10_000, 100_000])
    ap.add_argument('--kinds', nargs='+', default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument('--large-n', type=int, nargs='*', default=[1_000_000],
                    help='map sizes run only with --large-kinds (the float32 map is never held whole)')
    ap.add_argument('--large-kinds', nargs='*', default=['flat', 'ivf_pqfs', 'ivf_pq'], choices=list(CANDIDATES))
    ap.add_argument('--queries', type=int, default=500)
    ap.add_argument('--query-cos', type=float, default=0.8)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', type=Path, default=Path('out/map_index/table.md'))
    args = ap.parse_args()
    import faiss
    faiss.omp_set_num_threads(1)
    if not args.areas:
        ap.error('no real maps: pass --areas (files with a "descriptors" tensor)')
    areas = [np.ascontiguousarray(load_file(a)['descriptors'], np.float32) for a in args.areas]
    p = areas[0].shape[1]
    queries, cos = make_queries(areas[0], args.queries, args.query_cos, args.seed)
    print(f'areas: {", ".join(f"{Path(a).name} ({len(d)})" for a, d in zip(args.areas, areas))}; '
          f'{len(queries)} queries, mean cosine to their source row {cos:.3f}; faiss {faiss.__version__}, 1 thread')
    print(HEADER, flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix='map_index_') as tmp:
        tmp = Path(tmp)
        for n, kinds in [(n, args.kinds) for n in args.n] + [(n, args.large_kinds) for n in args.large_n]:
            rows_path = tmp / 'rows.f16'
            gt, copies = make_map(areas, n, queries, rows_path)
            for kind in kinds:
                results += evaluate(kind, n, rows_path, p, queries, gt, tmp)
            rows_path.unlink()
    lines = [f'Map index benchmark ({len(queries)} queries, cosine to source {cos:.3f}, 1 thread, '
             f'areas {", ".join(Path(a).name for a in args.areas)})', '', HEADER] + [fmt_row(r) for r in results]
    flat = {r['n']: r for r in results if r['kind'] == 'flat'}
    ratios = []
    for r in results:
        if r['kind'] != 'flat' and r['n'] in flat:
            f = flat[r['n']]
            ratios.append(f"{r['kind']} {r['params']} N={r['n']:.0e}: p95 / flat {r['p95'] / f['p95']:.2f}, "
                          f"bytes / flat {r['bytes_tile'] / f['bytes_tile']:.3f}")
    if ratios:
        lines += ['', 'Ratios to flat (float32 brute force through the same re-rank path):', ''] + \
                 [f'- {x}' for x in ratios]
    text = '\n'.join(lines) + '\n'
    print('\n' + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
