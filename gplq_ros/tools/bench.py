"""gplq_bench: latency, size and fidelity of the onboard options, side by side, one process.

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
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .common import cli, load_images


# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork/exec (the parent's peak would show)
ONBOARD_RSS = """
import sys, numpy as np
from gplq_ros.runtime.engine import load
e = load(sys.argv[1], threads=2)
for _ in range(5):
    e(np.zeros((480, 640, 3), np.uint8))
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
print(int(hwm.split()[1]) / 1024.0)
"""


def onboard_peak_rss_mb(path: Path) -> float:
    """Peak RSS of a fresh process that only loads the engine (no torch) and runs 5 frames."""
    import subprocess
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


class _Reader:
    """onnxruntime CalibrationDataReader over prepared real crops."""

    def __init__(self, tensors):
        self.it = iter([{'pixels': t} for t in tensors])

    def get_next(self):
        return next(self.it, None)


@cli('gplq_bench')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_bench', description=__doc__.split('\n\n')[0])
    ap.add_argument('--artifacts', nargs='*', type=Path, default=None,
                    help='GPLQ artifacts (default: $GPLQ_HOME/artifacts/w4a8_gplq and w4a4_gplq if present)')
    ap.add_argument('--sizes', nargs='+', type=int, default=[224, 448])
    ap.add_argument('--threads', nargs='+', type=int, default=[1, 2])
    ap.add_argument('--runs', type=int, default=20)
    ap.add_argument('--workdir', type=Path, default=Path('out/bench_runtime'))
    ap.add_argument('--json', type=Path, default=None)
    args = ap.parse_args(argv)

    import torch
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    from ..gplq.metrics import token_cosine
    from ..model.backbone import load_extractor
    from ..model.pipeline import PipelineConfig, ReferencePipeline
    from ..model.vocab import Vocabulary
    from ..paths import default_vocab, gplq_home
    from ..runtime.engine import load
    from ..runtime.export import export_artifact, export_onnx
    from .calibrate import default_calibration_images, make_crops
    from .fidelity import default_heldout

    arts = args.artifacts
    if arts is None:
        arts = [p for p in (gplq_home() / 'artifacts' / f'{t}_gplq.safetensors' for t in ('w4a8', 'w4a4'))
                if p.is_file()]
    args.workdir.mkdir(parents=True, exist_ok=True)
    ext = load_extractor()
    vocab = Vocabulary.load(default_vocab(), ext.weights_sha256)
    held = load_images(default_heldout())
    calib_images = load_images(default_calibration_images())
    frame = held[0]
    results = []

    def add(name, size, fn, file_mb, rss):
        for th in args.threads:
            torch.set_num_threads(th)
            f = fn(th)
            f(frame)
            med, p95 = timed(f, frame, args.runs)
            results.append({'engine': name, 'size': size, 'threads': th, 'median_ms': med, 'p95_ms': p95,
                            'file_mb': file_mb, 'rss_mb': rss})

    fid = {}
    for size in args.sizes:
        hw = (size, size)
        cfg = PipelineConfig(long_side=size)
        ref = ReferencePipeline(ext, cfg, vocab)
        add('torch FP32 eager', size, lambda th: ref, None, None)
        fp32 = export_onnx(ext, args.workdir / f'fp32_{size}.onnx', hw, cfg, force=True)
        dyn = args.workdir / f'dynint8_{size}.onnx'
        quantize_dynamic(str(fp32), str(dyn), weight_type=QuantType.QInt8)
        stat = args.workdir / f'qdq_minmax_{size}.onnx'
        crops = [c.numpy() for c in make_crops(calib_images, 16, seed=7, size=size)]
        quantize_static(str(fp32), str(stat), _Reader(crops), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=['MatMul', 'Gemm'])
        graphs = [('ORT FP32', fp32), ('ORT dynamic int8', dyn), ('ORT static int8 QDQ (MinMax)', stat)]
        for a in arts:
            r = export_artifact(a, args.workdir / f'{a.stem}_{size}.onnx', hw, cfg, packed=False, force=True,
                                expect_weights_sha256=ext.weights_sha256)
            path = r['path']
            label = f'GPLQ {r["tag"].upper()} ' + (f'g{r["group_size"]}, float W' if r['int8'] == 0
                                                   else 'per-channel, int8 W')
            graphs.append((label, path))
            if size == 224:
                fid[label] = {'artifact_mb': round(a.stat().st_size / 1e6, 2)}
        for name, path in graphs:
            engines = {th: load(path, threads=th, centers=vocab.centers) for th in args.threads}
            rss = onboard_peak_rss_mb(path)
            add(name, size, lambda th: engines[th], round(path.stat().st_size / 1e6, 2), rss)
            if size == 224:
                e = engines[args.threads[-1]]
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
    print(f'gplq_bench: {args.runs} runs each, image -> outputs (preprocess, graph, heads); '
          f'{os.cpu_count()} CPUs')
    print('| engine | px | threads | median ms | p95 ms | x torch FP32 | x ORT dyn int8 | file MB | RSS MB |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in results:
        k = (r['size'], r['threads'])
        r['x_torch_fp32'] = r['median_ms'] / base[k]
        r['x_ort_dynamic_int8'] = r['median_ms'] / dyn[k]
        print(f'| {r["engine"]} | {r["size"]} | {r["threads"]} | {r["median_ms"]:.1f} | {r["p95_ms"]:.1f} | '
              f'{r["x_torch_fp32"]:.2f} | {r["x_ort_dynamic_int8"]:.2f} | {r["file_mb"] or "-"} | '
              f'{r["rss_mb"] if r["rss_mb"] is not None else "-"} |')
    print('\nfidelity to FP32 (held-out NEON tiles, 224 px):')
    for name, f in fid.items():
        print(f'  {name:32s} ' + '  '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
                                           for k, v in f.items()))
    if args.json:
        args.json.write_text(json.dumps({'rows': results, 'fidelity': fid}, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
