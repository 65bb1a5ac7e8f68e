"""Approximate global retrieval over a large place map (numpy + faiss; issue #20).

A map of 10^6 tiles has 10^6 unit descriptors of P = 256 dimensions: 1 GB as float32,
more than the localizer may hold. Retrieval is therefore two steps:

1. **Candidates**: a compressed faiss index (codes in RAM, a few tens of bytes per tile
   for the IVF-PQ kinds) returns ``k' = candidates x k`` tile ids by approximate inner
   product.
2. **Exact re-rank**: the candidates' rows are read from one raw float16 file of all
   descriptors (``DescriptorRows``: ``os.pread``, no mmap, so the RSS stays bounded; adjacent
   rows coalesced into one read) and scored exactly (float16 rows as float32); the best
   ``k`` sorted by score descending are returned.

Index kinds (``IndexConfig.kind``):

* ``flat``: exact inner product over float32 codes (the brute-force reference; 4 P bytes a tile).
* ``ivf_sq8``: inverted file of ``nlist`` lists, 8-bit scalar-quantized codes (P bytes a tile).
* ``ivf_pq``: inverted file, product quantizer of ``m`` sub-vectors of ``nbits`` = 8 bits
  (m bytes a tile), residuals to the list centre encoded.
* ``ivf_pqfs`` (default): as ``ivf_pq`` with 4-bit codes scanned with SIMD ("fast scan"; m / 2
  bytes a tile): at equal bytes a tile as accurate as ``ivf_pq`` here, and faster to build and search.
* ``hnsw_sq8``: HNSW graph of ``hnsw_m`` links a node over 8-bit scalar-quantized codes
  (P + 8 hnsw_m bytes a tile; no inverted lists, slow to build).

Why three quarters of the lists and 8 x k candidates by default (``nprobe`` = 0): on the
synthetic 10^6-tile extension of the real maps (``benchmarks/map_index.py``,
``benchmarks/map_scale.py``) a query's 24 nearest tiles spread over many lists (weak neighbour
structure: the 24th neighbour's cosine is ~0.45). Half the lists and 4 x k candidates gave
recall@24 0.979-0.990 over runs of 200-500 queries (on the edge of 0.98); three quarters and 8 x k
gave 0.993 (500 queries) at a p95 of 8 ms, one thread (all lists: 0.996, 10 ms).

Every inverted-file index stores an int64 id per tile besides its code. Kinds that need
training (all but ``flat``) are trained on a deterministic sample of at most
``max_train`` rows. Search-time fields (``nprobe``, ``ef_search``, ``candidates``) may differ
between building and searching; the others are fixed by the built index.

Files: ``save_index`` writes faiss's own format at ``path`` and a JSON sidecar
``path + '.json'`` (format, version, config, rows, dims) that ``load_index`` checks. The
rows file is raw little-endian float16, N x P, row i = tile i, no header.

Measured latency / recall / memory per kind: ``benchmarks/map_index.py`` (its table is
written to ``out/map_index/table.md``).
"""
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Iterable, Tuple, Union

import numpy as np

from gplq_ros.onboard.fileformat import check_fields

__all__ = ['IndexConfig', 'INDEX_KINDS', 'BuiltIndex', 'MapIndexError', 'build_index', 'save_index', 'load_index',
           'index_bytes', 'DescriptorRows', 'write_descriptor_rows', 'GlobalIndex', 'brute_force', 'auto_nlist']

FORMAT = 'gplq_ros.map_index'
VERSION = 1
INDEX_KINDS = ('flat', 'ivf_sq8', 'ivf_pq', 'ivf_pqfs', 'hnsw_sq8')
ROW_DTYPE = np.dtype('<f2')
SEARCH_FIELDS = ('nprobe', 'ef_search', 'candidates')
_CHUNK = 65536          # rows converted to float32 / added at a time while building


class MapIndexError(ValueError):
    """An index file that cannot be used (missing sidecar, other format or version, other rows)."""


def _faiss():
    try:
        import faiss  # optional: only the large-map retrieval needs it
    except ImportError:
        raise ImportError('gplq_ros.onboard.mapindex needs faiss: pip install faiss-cpu') from None
    return faiss


def set_threads(n: int) -> None:
    """FAISS's OpenMP threads for searches in this process (the localizer node: 1)."""
    _faiss().omp_set_num_threads(n)


@dataclass(frozen=True)
class IndexConfig:
    """How a map's descriptors are indexed and searched (defaults: ``benchmarks/map_index.py``)."""
    kind: str = 'ivf_pqfs'
    nlist: int = 0             # inverted lists; 0 = auto_nlist(N)
    m: int = 128               # PQ sub-vectors (ivf_pq, ivf_pqfs); must divide P
    nbits: int = 0             # bits a PQ sub-code; 0 = the kind's: 8 for ivf_pq, 4 for ivf_pqfs (its only)
    nprobe: int = 0            # lists visited a query (search time); 0 = three quarters of them (module doc)
    hnsw_m: int = 32           # HNSW links a node
    ef_construction: int = 64  # HNSW build beam
    ef_search: int = 128       # HNSW search beam (search time)
    candidates: int = 8        # k' = candidates x k ids re-ranked exactly (search time)
    max_train: int = 100_000   # rows sampled to train the quantizers

    def __post_init__(self):
        check_fields(self, [
            ('kind', self.kind in INDEX_KINDS), ('nlist', 0 <= self.nlist <= 1 << 20),
            ('m', 1 <= self.m <= 256),
            ('nbits', self.nbits in {'ivf_pq': (0, 8), 'ivf_pqfs': (0, 4)}.get(self.kind, (self.nbits,))),
            ('nprobe', 0 <= self.nprobe <= 1 << 20), ('hnsw_m', 4 <= self.hnsw_m <= 128),
            ('ef_construction', 8 <= self.ef_construction <= 4096), ('ef_search', 1 <= self.ef_search <= 1 << 16),
            ('candidates', 1 <= self.candidates <= 1000), ('max_train', 256 <= self.max_train <= 10_000_000)])

    @property
    def pq_bits(self) -> int:
        return self.nbits or (4 if self.kind == 'ivf_pqfs' else 8)

    def build_fields(self) -> dict:
        """The fields a built index is fixed by (all but the search-time ones)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in SEARCH_FIELDS}


def auto_nlist(n: int) -> int:
    """Inverted lists for ``n`` tiles: the power of two nearest 4 sqrt(n), at most n / 39
    (faiss's k-means wants >= 39 training points a centre), at least 1."""
    want = 2 ** round(np.log2(max(4.0 * np.sqrt(max(n, 1)), 1.0)))
    return int(max(1, min(want, 2 ** int(np.log2(max(n // 39, 1))))))


@dataclass
class BuiltIndex:
    """A faiss index over ``n`` descriptors of ``p`` dims, with the config it was built with."""
    index: object              # faiss.Index
    cfg: IndexConfig
    n: int
    p: int


def _train_sample(desc: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    n = len(desc)
    if n <= max_rows:
        return np.ascontiguousarray(desc, np.float32)
    ids = np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
    return np.ascontiguousarray(desc[ids], np.float32)


def _new_index(cfg: IndexConfig, n: int, p: int):
    faiss = _faiss()
    ip = faiss.METRIC_INNER_PRODUCT
    if cfg.kind == 'flat':
        return faiss.IndexFlatIP(p)
    if cfg.kind == 'hnsw_sq8':
        index = faiss.IndexHNSWSQ(p, faiss.ScalarQuantizer.QT_8bit, cfg.hnsw_m, ip)
        index.hnsw.efConstruction = cfg.ef_construction
        return index
    nlist = cfg.nlist or auto_nlist(n)
    quantizer = faiss.IndexFlatIP(p)
    if cfg.kind == 'ivf_sq8':
        index = faiss.IndexIVFScalarQuantizer(quantizer, p, nlist, faiss.ScalarQuantizer.QT_8bit, ip)
    elif p % cfg.m:
        raise ValueError(f'IndexConfig.m={cfg.m} must divide the descriptor dimension {p}')
    elif cfg.kind == 'ivf_pq':
        index = faiss.IndexIVFPQ(quantizer, p, nlist, cfg.m, cfg.pq_bits, ip)
    else:
        index = faiss.IndexIVFPQFastScan(quantizer, p, nlist, cfg.m, cfg.pq_bits, ip)
    return index                    # (faiss's Python wrapper keeps the quantizer alive with the index)


def build_index(descriptors: np.ndarray, cfg: IndexConfig = IndexConfig(), seed: int = 0) -> BuiltIndex:
    """Index (N, P) unit descriptors (float32 or float16; a ``np.memmap`` works and is read in chunks).

    Args:
        descriptors: row i is tile i's descriptor.
        cfg: the index kind and its parameters.
        seed: picks the training sample (the same seed and rows give the same index).
    Returns:
        the built index, ids 0..N-1.
    """
    if descriptors.ndim != 2 or len(descriptors) < 1:
        raise ValueError(f'descriptors must be (N, P) with N >= 1, got shape={descriptors.shape}')
    n, p = descriptors.shape
    index = _new_index(cfg, n, p)
    if not index.is_trained:
        nlist = getattr(index, 'nlist', 1)
        if n < nlist:
            raise ValueError(f'{n} descriptors cannot train nlist={nlist} lists (IndexConfig.nlist)')
        sample = _train_sample(descriptors, cfg.max_train, seed)
        if hasattr(index, 'cp'):
            index.cp.seed = seed
        index.train(sample)
        del sample
    for i in range(0, n, _CHUNK):
        index.add(np.ascontiguousarray(descriptors[i:i + _CHUNK], np.float32))
    return BuiltIndex(index, cfg, n, p)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + '.json')


def save_index(built: BuiltIndex, path: Union[str, Path]) -> None:
    """Write the faiss index at ``path`` and its config to ``path + '.json'``."""
    faiss = _faiss()
    path = Path(path)
    faiss.write_index(built.index, str(path))
    meta = {'format': FORMAT, 'version': VERSION, 'faiss': faiss.__version__, 'n': built.n, 'p': built.p,
            'config': asdict(built.cfg)}
    _sidecar(path).write_text(json.dumps(meta, indent=1) + '\n')


def load_index(path: Union[str, Path]) -> BuiltIndex:
    """Read what ``save_index`` wrote; MapIndexError when the sidecar is missing or disagrees with the index."""
    faiss = _faiss()
    path = Path(path)
    side = _sidecar(path)
    if not path.is_file() or not side.is_file():
        raise MapIndexError(f'{path}: index or its sidecar {side.name} is missing')
    meta = json.loads(side.read_text())
    if meta.get('format') != FORMAT or meta.get('version') != VERSION:
        raise MapIndexError(f'{side}: format {meta.get("format")!r} version {meta.get("version")!r}, '
                            f'this reader takes {FORMAT!r} version {VERSION}')
    index = faiss.read_index(str(path))
    if index.ntotal != meta['n'] or index.d != meta['p']:
        raise MapIndexError(f'{path}: index holds {index.ntotal} x {index.d}, sidecar says {meta["n"]} x {meta["p"]}')
    return BuiltIndex(index, IndexConfig(**meta['config']), int(meta['n']), int(meta['p']))


def index_bytes(built: BuiltIndex) -> int:
    """Bytes of the index's payload (its serialized size: codes, ids, graph links, quantizers)."""
    return int(_faiss().serialize_index(built.index).nbytes)


def write_descriptor_rows(path: Union[str, Path], array: np.ndarray, append: bool = False) -> None:
    """Write (N, P) descriptors as raw little-endian float16 rows (``append``: after the rows already there)."""
    if array.ndim != 2:
        raise ValueError(f'descriptors must be (N, P), got shape={array.shape}')
    with open(path, 'ab' if append else 'wb') as f:
        for i in range(0, len(array), _CHUNK):
            f.write(np.ascontiguousarray(array[i:i + _CHUNK], ROW_DTYPE).tobytes())


class DescriptorRows:
    """Rows of a raw float16 descriptor file, read on demand with ``os.pread`` (no mmap).

    ``read(ids)`` sorts and de-duplicates the ids, reads each run of adjacent rows with one
    pread, and returns the rows in the order of ``ids``. Use as a context manager or ``close()``.
    """

    def __init__(self, path: Union[str, Path], n: int, p: int):
        self._fd = -1
        self.path, self.n, self.p = Path(path), int(n), int(p)
        self.row_bytes = self.p * ROW_DTYPE.itemsize
        size = self.path.stat().st_size
        if size != self.n * self.row_bytes:
            raise MapIndexError(f'{self.path}: {size} bytes, {self.n} float16 rows of {self.p} need '
                                f'{self.n * self.row_bytes}')
        self._fd = os.open(self.path, os.O_RDONLY)
        self.reads = 0         # preads issued (for benchmarks)

    def read(self, ids: Iterable[int]) -> np.ndarray:
        """(len(ids), P) float16 rows."""
        ids = np.asarray(ids, np.int64).ravel()
        if len(ids) and (ids.min() < 0 or ids.max() >= self.n):
            raise IndexError(f'row ids must be in [0, {self.n}), got {ids.min()}..{ids.max()}')
        uniq, inverse = np.unique(ids, return_inverse=True)
        buf = bytearray(len(uniq) * self.row_bytes)
        view = memoryview(buf)
        starts = np.flatnonzero(np.diff(uniq, prepend=-2) != 1)     # first index of each run of adjacent ids
        ends = np.append(starts[1:], len(uniq))
        for s, e in zip(starts.tolist(), ends.tolist()):
            want = (e - s) * self.row_bytes
            got = os.preadv(self._fd, [view[s * self.row_bytes:e * self.row_bytes]], int(uniq[s]) * self.row_bytes)
            if got != want:
                raise MapIndexError(f'{self.path}: short read ({got} of {want} bytes) at row {uniq[s]}')
        self.reads += len(starts)
        rows = np.frombuffer(buf, ROW_DTYPE).reshape(len(uniq), self.p)
        return rows[inverse.ravel()]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


def brute_force(descriptors: np.ndarray, q: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` by inner product in float32 (the reference), best first.

    Args:
        descriptors: (N, P) rows, read in chunks (a memmap works).
        q: a (P,) query or (Q, P) queries.
    Returns:
        ids int64 and scores float32, (k,) or (Q, k).
    """
    qs = np.atleast_2d(np.asarray(q, np.float32))
    k = min(k, len(descriptors))
    ids, scores = np.zeros((len(qs), 0), np.int64), np.zeros((len(qs), 0), np.float32)
    for i in range(0, len(descriptors), 4 * _CHUNK):
        s = qs @ np.asarray(descriptors[i:i + 4 * _CHUNK], np.float32).T
        if s.shape[1] > k:
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        else:
            top = np.tile(np.arange(s.shape[1]), (len(qs), 1))
        ids = np.concatenate([ids, top + i], axis=1)
        scores = np.concatenate([scores, np.take_along_axis(s, top, 1)], axis=1)
        if ids.shape[1] > k:
            keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            ids, scores = np.take_along_axis(ids, keep, 1), np.take_along_axis(scores, keep, 1)
    order = np.argsort(-scores, axis=1, kind='stable')
    ids, scores = np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
    return (ids[0], scores[0]) if np.ndim(q) == 1 else (ids, scores)


class GlobalIndex:
    """Top-k retrieval: index candidates re-ranked exactly with their float16 rows (module doc).

    ``cfg`` supplies the search-time fields (``nprobe``, ``ef_search``, ``candidates``); its
    other fields must equal those the index was built with (default: the built config).
    """

    def __init__(self, index: BuiltIndex, rows: DescriptorRows, cfg: IndexConfig = None):
        cfg = cfg or index.cfg
        if cfg.build_fields() != index.cfg.build_fields():
            raise ValueError(f'IndexConfig {cfg} differs from the built index\'s {index.cfg} '
                             f'in fields other than {SEARCH_FIELDS}')
        if (rows.n, rows.p) != (index.n, index.p):
            raise ValueError(f'rows file is {rows.n} x {rows.p}, the index {index.n} x {index.p}')
        self.built, self.rows, self.cfg = index, rows, cfg
        faiss = _faiss()
        self.nprobe = 0         # lists visited (inverted-file kinds)
        if cfg.kind == 'hnsw_sq8':
            self._params = faiss.SearchParametersHNSW()
            self._params.efSearch = cfg.ef_search
        elif cfg.kind.startswith('ivf'):
            self._params = faiss.SearchParametersIVF()
            self._params.nprobe = self.nprobe = min(cfg.nprobe or max(1, 3 * index.index.nlist // 4), index.index.nlist)
        else:
            self._params = None

    def candidates(self, q: np.ndarray, k: int) -> np.ndarray:
        """The index's ``candidates x k`` approximate best ids (fewer when the index has fewer)."""
        kk = min(self.cfg.candidates * k, self.built.n)
        _, ids = self.built.index.search(np.asarray(q, np.float32).reshape(1, -1), kk, params=self._params)
        ids = ids[0]
        return ids[ids >= 0]

    def search(self, q: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Best ``k`` tiles for a unit (P,) query: ids int64 (k,), exact scores float32 (k,), best first
        (fewer than k only when the index returns fewer candidates)."""
        q = np.asarray(q, np.float32).ravel()
        if q.shape != (self.built.p,):
            raise ValueError(f'query must be ({self.built.p},), got shape={q.shape}')
        ids = self.candidates(q, k)
        scores = self.rows.read(ids).astype(np.float32) @ q
        if len(ids) > k:
            top = np.argpartition(-scores, k - 1)[:k]
            ids, scores = ids[top], scores[top]
        order = np.argsort(-scores, kind='stable')
        return ids[order].astype(np.int64), scores[order]

    def with_search(self, **changes) -> 'GlobalIndex':
        """The same index and rows searched with other search-time fields (``nprobe=...`` etc.)."""
        return GlobalIndex(self.built, self.rows, replace(self.cfg, **changes))
