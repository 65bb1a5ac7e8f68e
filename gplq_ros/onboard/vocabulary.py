"""VLAD vocabulary: spherical k-means on patch features, saved versioned without pickle.

File format (``FORMAT`` version ``VERSION``): one safetensors file holding ``centers``
(K, C) float32 unit vectors; its header metadata key ``gplq_ros`` holds a JSON object
(format, version, backbone, weights_sha256, block, facet, long_side, k, image list with
sha256, feature count, seed). A sidecar ``.json`` with the same object is written for
people to read; loading trusts only the safetensors file.
"""
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
from safetensors.numpy import load_file, save_file

from gplq_ros.onboard.fileformat import read_versioned_meta
from gplq_ros.onboard.heads import l2_normalize

FORMAT = 'gplq_ros.vlad_vocab'
VERSION = 1


class VocabError(ValueError):
    """A vocabulary file that cannot be used (missing, wrong version, malformed)."""


def spherical_kmeans(x: np.ndarray, k: int, iters: int = 30, seed: int = 0) -> np.ndarray:
    """k-means on unit vectors by cosine similarity, k-means++ seeding; returns (k, C)."""
    x = l2_normalize(np.asarray(x, np.float32))
    n = x.shape[0]
    if k < 1 or n < k:
        raise ValueError(f'k-means needs 1 <= k <= number of features, got k={k} n={n}')
    rng = np.random.default_rng(seed)
    # greedy k-means++ (as scikit-learn): of 2 + log(k) candidates drawn with probability
    # proportional to the squared distance, keep the one that lowers the potential most
    trials = 2 + int(np.log(k))
    centers = [x[rng.integers(n)]]
    d2 = np.maximum(0.0, 2.0 - 2.0 * (x @ centers[0]))
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else None
        cand = rng.choice(n, size=trials, p=p)
        cand_d2 = np.minimum(d2[None], np.maximum(0.0, 2.0 - 2.0 * (x[cand] @ x.T)))
        best = int(np.argmin(cand_d2.sum(axis=1)))
        centers.append(x[cand[best]])
        d2 = cand_d2[best]
    c = np.stack(centers)
    for _ in range(iters):
        assign = np.argmax(x @ c.T, axis=1)
        new = np.zeros_like(c)
        np.add.at(new, assign, x)
        empty = np.bincount(assign, minlength=k) == 0
        if empty.any():  # re-seed empty clusters on the worst-served points
            worst = np.argsort(np.max(x @ c.T, axis=1))[:int(empty.sum())]
            new[empty] = x[worst]
        new = l2_normalize(new)
        if np.allclose(new, c, atol=1e-6):
            c = new
            break
        c = new
    return c.astype(np.float32)


@dataclass
class VocabMeta:
    backbone: str
    weights_sha256: str
    block: int
    facet: str
    long_side: int
    k: int
    seed: int
    n_features: int
    images: List[dict] = field(default_factory=list)
    format: str = FORMAT
    version: int = VERSION


@dataclass
class Vocabulary:
    centers: np.ndarray
    meta: VocabMeta

    def save(self, path: Path, force: bool = False) -> None:
        path = Path(path)
        if path.exists() and not force:
            raise FileExistsError(f'{path} exists; pass force=True (--force) to overwrite')
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(asdict(self.meta), sort_keys=True)
        tmp = path.with_suffix(path.suffix + '.tmp')
        save_file({'centers': np.ascontiguousarray(self.centers, np.float32)}, str(tmp),
                  metadata={'gplq_ros': text})
        tmp.replace(path)
        path.with_suffix('.json').write_text(json.dumps(asdict(self.meta), indent=2) + '\n')

    @classmethod
    def load(cls, path: Path, expect_weights_sha256: Optional[str] = None) -> 'Vocabulary':
        raw = read_versioned_meta(path, FORMAT, VERSION, 'vocabulary', 'build one with gplq_vocab',
                                  VocabError)
        meta = VocabMeta(**raw)
        centers = load_file(str(path))['centers']
        if centers.shape[0] != meta.k or centers.ndim != 2:
            raise VocabError(f'{path}: centers shape {centers.shape} does not match k={meta.k}')
        if expect_weights_sha256 and meta.weights_sha256 != expect_weights_sha256:
            raise VocabError(f'{path}: built for weights sha256={meta.weights_sha256[:12]}..., '
                             f'but the extractor uses {expect_weights_sha256[:12]}...')
        return cls(centers, meta)
