"""Latency, size and fidelity of the onboard options side by side, interleaved in one
process (``gplq_bench``).

Rows: torch FP32 eager (the reference pipeline), then each graph on each backend
(ONNX Runtime CPU, OpenVINO CPU): FP32, ORT dynamic int8 (``quantize_dynamic``), ORT
static int8 QDQ (``quantize_static``, MinMax), NNCF int8 PTQ (``nncf.quantize``) and each
given GPLQ artifact (exported per-output-channel int8 kernels). Every row is image ->
outputs: preprocessing, graph and the numpy heads, as onboard, on a camera-sized frame
(640 px wide) of a held-out tile.

Timing is interleaved: for one (input size, threads) all engines are loaded, then each
round times every engine once, in a shuffled order, so that clock and load changes hit
all rows alike; median and p95 over the rounds. Ratios are to ORT dynamic int8 in the
same (size, threads) group. ``GMAC/s`` = multiply-accumulates of the ViT forward at that
input size (``vit_gmacs``, counted from the layer shapes) / median graph time; the
machine's int8 limit is stated next to it (``int8_limits``).

Fidelity per row (224 x 224, held-out NEON tiles, against the torch FP32 reference):
final-token cosine and boundary-map SSIM. Fidelity on sources no artifact saw is
``gplq_fidelity_onboard``'s job. "RSS MB" is the peak RSS of a separate process that
imports only the onboard engine (no torch), loads the graph and runs 5 frames.
"""
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch

from gplq_ros.offline.backbone import load_extractor
from gplq_ros.offline.data import default_calibration_images, default_heldout, load_images
from gplq_ros.offline.onnx_export import export_artifact
from gplq_ros.offline.peers import nncf_int8_graph, peer_graphs
from gplq_ros.offline.reference import ReferencePipeline
from gplq_ros.onboard import heads
from gplq_ros.onboard.stats import interleaved_ms
from gplq_ros.onboard.engine import load
from gplq_ros.onboard.metrics import ssim, token_cosine
from gplq_ros.onboard.paths import default_vocab
from gplq_ros.onboard.pipeline import PipelineConfig, run_heads
from gplq_ros.onboard.preprocess import PATCH, prepare
from gplq_ros.onboard.vocabulary import Vocabulary

BACKEND_LABELS = {'onnxruntime': 'ORT', 'openvino': 'OpenVINO'}

# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork/exec (the parent's peak would show)
ONBOARD_RSS = """
import sys, numpy as np
from gplq_ros.onboard.engine import load
e = load(sys.argv[1], threads=2, backend=sys.argv[2])
for _ in range(5):
    e(np.zeros((480, 640, 3), np.uint8))
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
print(int(hwm.split()[1]) / 1024.0)
"""


def onboard_peak_rss_mb(path: Path, backend: str) -> float:
    """Peak RSS of a fresh process that only loads the engine (no torch) and runs 5 frames."""
    res = subprocess.run([sys.executable, '-c', ONBOARD_RSS, str(path), backend], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    if res.returncode != 0:
        raise RuntimeError(f'engine process failed for {path}: {res.stderr[-500:]}')
    return round(float(res.stdout.strip().splitlines()[-1]), 1)


def vit_gmacs(input_hw: Tuple[int, int], dim: int = 384, hidden: int = 1536, depth: int = 12) -> float:
    """Multiply-accumulates (G) of a DINOv2-S/14 forward: patch embedding, per block the
    four Linears and the two attention matmuls (LayerNorm, softmax, GELU not counted)."""
    n = (input_hw[0] // PATCH) * (input_hw[1] // PATCH)
    t = n + 1
    block = t * dim * 3 * dim + t * dim * dim + 2 * t * dim * hidden + 2 * t * t * dim
    return (n * dim * 3 * PATCH * PATCH + depth * block) / 1e9


def int8_limits(cores: int, ghz: float) -> Dict[str, float]:
    """Peak int8 GMAC/s of ``cores`` cores at ``ghz``: AVX-512 VNNI, 2 x 512-bit VPDPBUSD per
    cycle (64 MACs each); AMX-INT8, one 16x64 by 64x16 tile product (16,384 MACs) per 16 cycles."""
    return {'avx512_vnni': cores * ghz * 128, 'amx_int8': cores * ghz * 1024}


def cpu_ghz() -> float:
    for line in open('/proc/cpuinfo'):
        if line.startswith('cpu MHz'):
            return float(line.split(':')[1]) / 1e3
    return float('nan')


def camera_frame(image: np.ndarray, input_hw: Tuple[int, int]) -> np.ndarray:
    """The image resized to a 640-px-wide frame of the input's aspect ratio (640x480 for 168x224)."""
    h, w = input_hw
    return cv2.resize(image, (640, round(640 * h / w)), interpolation=cv2.INTER_AREA)


def stage_times(engine, frame: np.ndarray, runs: int) -> Dict[str, float]:
    """Median ms of each part of one frame on ``engine``, split as ``pipeline.run_heads`` runs
    them: preprocess (resize + normalize), graph, feature gradients (shared by the boundary and
    corner heads), boundary head, Harris + corners, VLAD, upsampling to camera size; and
    ``heads_total``, one ``run_heads`` call."""
    cfg = engine.cfg
    parts = {k: [] for k in ('preprocess', 'graph', 'gradients', 'boundary', 'harris_corners', 'vlad', 'upsample',
                             'heads_total')}
    for _ in range(runs):
        t = [time.perf_counter()]
        prep = prepare(frame, size=engine.input_hw)
        t.append(time.perf_counter())
        tok, vf = engine.runner(prep.tensor)
        t.append(time.perf_counter())
        gh, gw = prep.grid_hw
        sxx, syy, sxy = heads.structure_sums(*heads.feature_gradients(tok[0].reshape(gh, gw, -1)))
        t.append(time.perf_counter())
        b = heads.boundary_from_sums(sxx, syy)
        t.append(time.perf_counter())
        hr = heads.harris_from_sums(sxx, syy, sxy, cfg.harris_k, cfg.harris_sigma)
        heads.top_corners(hr, cfg.top_k, cfg.nms_radius, cfg.corner_rel_threshold)
        t.append(time.perf_counter())
        if engine.centers is not None:
            heads.vlad(vf[0].reshape(gh * gw, -1), engine.centers)
        t.append(time.perf_counter())
        heads.upsample(b, prep.orig_hw)
        t.append(time.perf_counter())
        run_heads(cfg, prep, tok[0], vf[0], engine.centers)
        t.append(time.perf_counter())
        for k, a, z in zip(parts, t, t[1:]):
            parts[k].append((z - a) * 1e3)
    return {k: float(np.median(v)) for k, v in parts.items()}


def interleaved(fns: Dict[str, callable], frames: Sequence[np.ndarray], runs: int, seed: int = 0):
    """{name: (median ms, p95 ms)}: each round times every fn once, in a shuffled order."""
    times = interleaved_ms(fns, frames, runs, seed)
    return {n: (float(np.median(v)), float(np.percentile(v, 95))) for n, v in times.items()}


def run_benchmark(artifacts: Sequence[Path] = (), sizes: Sequence[Tuple[int, int]] = ((224, 224), (168, 224)),
                  threads: Sequence[int] = (1, 2), runs: int = 30,
                  backends: Sequence[str] = ('onnxruntime', 'openvino'), workdir: Path = Path('out/bench_runtime'),
                  nncf_crops: int = 64) -> dict:
    """{'rows': one per engine x backend x size x threads, 'fidelity': per graph x backend at
    224 px, 'stages': per-part ms of the last graph (a GPLQ one when given) per backend, 'machine': ...}."""
    workdir.mkdir(parents=True, exist_ok=True)
    ext = load_extractor()
    vocab = Vocabulary.load(default_vocab(), ext.weights_sha256)
    held = load_images(default_heldout())
    calib_images = load_images(default_calibration_images())
    rows, fid, stages = [], {}, {}
    for hw in sizes:
        hw = tuple(hw)
        cfg = PipelineConfig(long_side=max(hw))
        frames = [camera_frame(img, hw) for img in held]
        ref = ReferencePipeline(ext, cfg, vocab)
        fp32, dyn, stat = peer_graphs(ext, workdir, hw, calib_images, static_crops=16)
        nncf_path = nncf_int8_graph(fp32, workdir / f'nncf_int8_{hw[0]}x{hw[1]}.onnx', calib_images, nncf_crops)
        graphs: List[Tuple[str, Path]] = [('FP32', fp32), ('dynamic int8 (ORT quantize_dynamic)', dyn),
                                          ('static int8 QDQ (ORT quantize_static, MinMax)', stat),
                                          ('NNCF int8 PTQ', nncf_path)]
        for a in artifacts:
            r = export_artifact(a, workdir / f'{Path(a).stem}_{hw[0]}x{hw[1]}.onnx', hw, cfg, packed=False, force=True,
                                expect_weights_sha256=ext.weights_sha256)
            graphs.append((f'GPLQ {r["tag"].upper()} {Path(a).stem}', r['path']))
        gmacs = vit_gmacs(hw)
        for th in threads:
            torch.set_num_threads(th)
            engines = {(g, b): load(path, threads=th, centers=vocab.centers, backend=b)
                       for g, path in graphs for b in backends}
            fns = {('torch FP32 eager', 'torch'): ref, **engines}
            res = interleaved(fns, frames, runs)
            dyn_ms = res[(graphs[1][0], 'onnxruntime')][0] if 'onnxruntime' in backends else float('nan')
            # graph alone: the prepared tensors are made once, outside the timing
            tensors = [prepare(f, size=hw).tensor for f in frames]
            graph_ms = interleaved({k: e.runner for k, e in engines.items()}, tensors, max(10, runs // 3))
            for (g, b), (med, p95) in res.items():
                path = dict(graphs).get(g)
                gm = graph_ms.get((g, b), (None,))[0]
                rows.append({'engine': g, 'backend': b, 'input_hw': list(hw), 'threads': th, 'median_ms': med,
                             'p95_ms': p95, 'x_ort_dynamic_int8': med / dyn_ms,
                             'graph_median_ms': gm, 'gmac_per_s': gmacs / gm * 1e3 if gm else None,
                             'file_mb': round(path.stat().st_size / 1e6, 2) if path else None})
            if th == threads[-1]:
                last = graphs[-1][0]
                for b in backends:
                    stages[f'{last} | {b} | {hw[0]}x{hw[1]} | {th} threads'] = stage_times(engines[(last, b)],
                                                                                           frames[0], runs)
                if hw == (224, 224):
                    for (g, b), e in engines.items():
                        cos, bs = [], []
                        for img in held:
                            o, r = e(img), ref(img)
                            cos.append(token_cosine(o.tokens, r.tokens))
                            bs.append(ssim(o.boundary, r.boundary))
                        fid[f'{g} | {b}'] = {'token_cosine': float(np.mean(cos)), 'boundary_ssim': float(np.mean(bs))}
            engines.clear()
        rss = {(g, b): onboard_peak_rss_mb(path, b) for g, path in graphs for b in backends}
        for r in rows:
            if r['input_hw'] == list(hw):
                r['rss_mb'] = rss.get((r['engine'], r['backend']))
    machine = {'cpus': os.cpu_count(), 'ghz': cpu_ghz()}
    machine['int8_limit_gmac_per_s'] = int8_limits(min(machine['cpus'], max(threads)), machine['ghz'])
    machine['vit_gmacs'] = {f'{h}x{w}': vit_gmacs((h, w)) for h, w in sizes}
    return {'rows': rows, 'fidelity': fid, 'stages': stages, 'machine': machine}
