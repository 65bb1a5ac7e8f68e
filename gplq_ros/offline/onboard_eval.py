"""Fidelity and place recognition of the onboard forms, run through the onboard engine
(ONNX Runtime), on real aerial images the artifacts never saw (``gplq_fidelity_onboard``).

Forms (rows): FP32, ORT dynamic int8 (``quantize_dynamic`` of the FP32 graph, no
calibration), ORT static int8 QDQ (``quantize_static``, MinMax per channel, on crops of the
calibration images) and each GPLQ artifact, all exported for ``size`` x ``size`` input.
Per source and form, on the place queries (``onboard.places``): token cosine, boundary
SSIM, corner repeatability and descriptor cosine against FP32 on the same image
(``onboard.drift.compare``), and place recall R@1/R@5 with the database built by the FP32
graph and the queries computed by the form (the onboard case: a map made offline, queries
made by the drone).
"""
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from gplq_ros.offline.onnx_export import export_artifact
from gplq_ros.offline.peers import peer_graphs
from gplq_ros.onboard.drift import METRICS, compare
from gplq_ros.onboard.engine import Engine, load
from gplq_ros.onboard.metrics import token_cosine
from gplq_ros.onboard.pipeline import PipelineConfig
from gplq_ros.onboard.places import PlaceConfig, Places, make_places, recall_at_k

FIDELITY = ('token_cosine',) + METRICS


def build_forms(extractor, artifacts: Sequence[Path], calibration_images: List[np.ndarray], workdir: Path,
                size: int = 224, static_crops: int = 32) -> Dict[str, Path]:
    """The graphs to compare, written to ``workdir`` (name -> path), FP32 first."""
    cfg = PipelineConfig(long_side=size)
    fp32, dyn, stat = peer_graphs(extractor, workdir, size, calibration_images, static_crops)
    forms = {'FP32': fp32, 'ORT dynamic int8': dyn, 'ORT static int8 QDQ': stat}
    for a in artifacts:
        r = export_artifact(Path(a), workdir / f'{Path(a).stem}_{size}.onnx', (size, size), cfg, packed=False,
                            force=True, expect_weights_sha256=extractor.weights_sha256)
        forms[f'GPLQ {Path(a).stem}'] = r['path']
    return forms


@dataclass
class FormResult:
    form: str
    source: str
    places: int
    queries: int
    fidelity: Dict[str, float] = field(default_factory=dict)    # means over the queries
    recall: Dict[str, float] = field(default_factory=dict)
    ms_per_frame: float = 0.0


def evaluate_forms(forms: Dict[str, Path], sources: Dict[str, List[np.ndarray]], centers: np.ndarray,
                   place_cfg: PlaceConfig = PlaceConfig(), max_places: int = 0, threads: int = 2,
                   log=print, backend: str = 'onnxruntime') -> List[FormResult]:
    """Every form on every source; ``forms`` must start with the FP32 graph (the reference
    and the database builder). Every form runs on the same ``backend``."""
    names = list(forms)
    engines: Dict[str, Engine] = {n: load(forms[n], threads=threads, centers=centers, backend=backend)
                                  for n in names}
    ref = engines[names[0]]
    if ref.kind != 'fp32':
        raise ValueError(f'the first form must be the FP32 graph, got kind={ref.kind!r}')
    results = []
    for source, images in sources.items():
        per_image: List[Places] = [make_places(img, place_cfg, max_places) for img in images]
        db_desc, db_centres, q_centres = [], [], []
        for k, p in enumerate(per_image):
            db_desc += [ref(t).descriptor for t in p.db_images]
            # places of different images never match: move each image far apart
            db_centres.append(p.db_centres + k * 1e6)
            q_centres.append(p.query_centres + k * 1e6)
        db_desc, db_centres, q_centres = np.stack(db_desc), np.concatenate(db_centres), np.concatenate(q_centres)
        queries = [q for p in per_image for q in p.queries]
        t0 = time.perf_counter()
        ref_out = [ref(q) for q in queries]
        ref_ms = 1e3 * (time.perf_counter() - t0) / max(1, len(queries))
        for name in names:
            eng = engines[name]
            t0 = time.perf_counter()
            outs = ref_out if eng is ref else [eng(q) for q in queries]   # FP32 ran once, above
            ms = ref_ms if eng is ref else 1e3 * (time.perf_counter() - t0) / max(1, len(queries))
            fid = {k: [] for k in FIDELITY}
            for r, o in zip(ref_out, outs):
                m = compare(r, o.boundary, o.corners_px, o.descriptor)
                m['token_cosine'] = token_cosine(r.tokens, o.tokens)
                for k in FIDELITY:
                    fid[k].append(m[k])
            rec = recall_at_k(db_desc, db_centres, np.stack([o.descriptor for o in outs]), q_centres,
                              per_image[0].tile)
            res = FormResult(name, source, len(db_desc), len(queries), {k: float(np.mean(v)) for k, v in fid.items()},
                             rec, ms)
            results.append(res)
            log(f'{source:24s} {name:34s} ' + ' '.join(f'{k} {v:.4f}' for k, v in res.fidelity.items())
                + ' ' + ' '.join(f'{k} {v:.3f}' for k, v in rec.items()) + f' {ms:.1f} ms')
    return results


def markdown_table(results: List[FormResult]) -> str:
    head = ('| form | source | places / queries | token cos | boundary SSIM | corner rep. | descriptor cos | '
            'R@1 | R@5 | ms/frame |')
    rows = [head, '|' + '---|' * 10]
    for r in results:
        f = r.fidelity
        rows.append(f'| {r.form} | {r.source} | {r.places} / {r.queries} | {f["token_cosine"]:.4f} | '
                    f'{f["boundary_ssim"]:.4f} | {f["corner_repeatability"]:.3f} | {f["descriptor_cosine"]:.4f} | '
                    f'{r.recall["R@1"]:.3f} | {r.recall["R@5"]:.3f} | {r.ms_per_frame:.1f} |')
    return '\n'.join(rows)
