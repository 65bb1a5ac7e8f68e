"""Latency, size and fidelity of the onboard options side by side, in one process
(``gplq_bench``).


Rows: torch FP32 eager (the reference pipeline), ORT FP32, ORT dynamic int8
(``quantize_dynamic`` of the FP32 export), ORT static int8 QDQ (``quantize_static``, MinMax
calibration on 16 real crops), and each given GPLQ artifact exported as a QDQ graph.
Every ORT row includes preprocessing and the numpy heads, as onboard. Columns per input
size (square, px) and thread count: median / p95 ms, ratio to torch FP32 and to ORT
dynamic int8; then model file size, onboard peak RSS, and fidelity to
FP32 on the held-out NEON tiles at 224 px (final patch-token cosine, VLAD cosine).
"RSS MB" is the peak RSS of a separate process that imports only the onboard engine (no
torch), loads the graph and runs 5 frames.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gplq_ros.offline.backbone import load_extractor
from gplq_ros.offline.data import default_calibration_images, default_heldout, load_images
from gplq_ros.offline.onnx_export import export_artifact
from gplq_ros.offline.peers import peer_graphs
from gplq_ros.offline.reference import ReferencePipeline
from gplq_ros.onboard.engine import load
from gplq_ros.onboard.metrics import token_cosine
from gplq_ros.onboard.paths import default_vocab, gplq_home
from gplq_ros.onboard.pipeline import PipelineConfig
from gplq_ros.onboard.vocabulary import Vocabulary


# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork/exec (the parent's peak would show)
ONBOARD_RSS = """
import sys, numpy as np
from gplq_ros.onboard.engine import load
e = load(sys.argv[1], threads=2)
for _ in range(5):
    e(np.zeros((480, 640, 3), np.uint8))
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
print(int(hwm.split()[1]) / 1024.0)
"""


def onboard_peak_rss_mb(path: Path) -> float:
    """Peak RSS of a fresh process that only loads the engine (no torch) and runs 5 frames."""
    res = subprocess.run([sys.executable, '-c', ONBOARD_RSS, str(path)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    if res.returncode != 0:
        raise RuntimeError(f'engine process failed for {path}: {res.stderr[-500:]}')
    return round(float(res.stdout.strip().splitlines()[-1]), 1)


def timed(fn, image, runs):
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(image)
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts)), float(np.percentile(ts, 95))


def run_benchmark(artifacts=None, sizes=(224, 448), threads=(1, 2), runs: int = 20,
                  workdir: Path = Path('out/bench_runtime')) -> dict:
    """{'rows': one per engine x size x threads (median/p95 ms, ratios to torch FP32 and
    ORT dynamic int8, file MB, onboard RSS MB), 'fidelity': per engine at 224 px}."""

    arts = artifacts
    if arts is None:
        arts = [p for p in (gplq_home() / 'artifacts' / f'{t}_gplq.safetensors' for t in ('w4a8', 'w4a4'))
                if p.is_file()]
    workdir.mkdir(parents=True, exist_ok=True)
    ext = load_extractor()
    vocab = Vocabulary.load(default_vocab(), ext.weights_sha256)
    held = load_images(default_heldout())
    calib_images = load_images(default_calibration_images())
    frame = held[0]
    results = []

    def add(name, size, fn, file_mb, rss):
        for th in threads:
            torch.set_num_threads(th)
            f = fn(th)
            f(frame)
            med, p95 = timed(f, frame, runs)
            results.append({'engine': name, 'size': size, 'threads': th, 'median_ms': med, 'p95_ms': p95,
                            'file_mb': file_mb, 'rss_mb': rss})

    fid = {}
    for size in sizes:
        hw = (size, size)
        cfg = PipelineConfig(long_side=size)
        ref = ReferencePipeline(ext, cfg, vocab)
        add('torch FP32 eager', size, lambda th: ref, None, None)
        fp32, dyn, stat = peer_graphs(ext, workdir, size, calib_images, static_crops=16)
        graphs = [('ORT FP32', fp32), ('ORT dynamic int8', dyn), ('ORT static int8 QDQ (MinMax)', stat)]
        for a in arts:
            r = export_artifact(a, workdir / f'{a.stem}_{size}.onnx', hw, cfg, packed=False, force=True,
                                expect_weights_sha256=ext.weights_sha256)
            path = r['path']
            label = f'GPLQ {r["tag"].upper()} ' + (f'g{r["group_size"]}, float W' if r['int8'] == 0
                                                   else 'per-channel, int8 W')
            graphs.append((label, path))
            if size == 224:
                fid[label] = {'artifact_mb': round(a.stat().st_size / 1e6, 2)}
        for name, path in graphs:
            engines = {th: load(path, threads=th, centers=vocab.centers) for th in threads}
            rss = onboard_peak_rss_mb(path)
            add(name, size, lambda th: engines[th], round(path.stat().st_size / 1e6, 2), rss)
            if size == 224:
                e = engines[threads[-1]]
                cos, dcos = [], []
                for img in held:
                    a, b = e(img), ref(img)
                    cos.append(token_cosine(a.tokens, b.tokens))
                    dcos.append(float(a.descriptor @ b.descriptor))
                fid.setdefault(name, {}).update({'final_cosine': float(np.mean(cos)),
                                                 'descriptor_cosine': float(np.mean(dcos))})
            engines.clear()  # free the sessions before the next graph
    base = {(r['size'], r['threads']): r['median_ms'] for r in results if r['engine'] == 'torch FP32 eager'}
    dyn = {(r['size'], r['threads']): r['median_ms'] for r in results if r['engine'] == 'ORT dynamic int8'}
    for r in results:
        k = (r['size'], r['threads'])
        r['x_torch_fp32'] = r['median_ms'] / base[k]
        r['x_ort_dynamic_int8'] = r['median_ms'] / dyn[k]
    return {'rows': results, 'fidelity': fid}
