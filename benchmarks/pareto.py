"""The Pareto table of #21: size, calibration time, fidelity and place recall on every unseen
source, and latency on OpenVINO and ONNX Runtime, for GPLQ artifacts and the int8 peers,
all in one run.

usage: python benchmarks/pareto.py A.safetensors [B.safetensors ...] [--runs 40] [--threads 2]
                                   [--out out/pareto] [--size 224]
Rows: FP32, ORT dynamic int8 (``quantize_dynamic``), NNCF int8 PTQ (``nncf.quantize``), then
each artifact (exported standalone at ``--size``). Columns:
* size: the artifact file (what a drone stores: the packed graph holds no weights; the graph
  file itself is listed too) or the peer's graph file; x FP32 graph file;
* calibration: the artifact report's ``timing_s.total`` (the machine it was made on);
* per unseen source (``gplq_assets --evaluation``: drone marina, Sentinel-2, SpaceNet; never
  used in calibration): token cosine, boundary SSIM, corner repeatability, descriptor cosine
  and place R@1 (``offline.onboard_eval``, ONNX Runtime);
* latency: graph median ms at ``--size`` x ``--size``, ``--threads`` threads, interleaved in
  one process (every round times every graph on both backends in a shuffled order), and the
  ratio to ORT dynamic int8 on ONNX Runtime.
Writes ``pareto.json`` and ``pareto.md`` into ``--out``.
"""
import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from gplq_ros.offline.backbone import load_extractor
from gplq_ros.offline.benchmark import interleaved
from gplq_ros.offline.data import default_calibration_images, default_evaluation_sources, load_images, make_crops
from gplq_ros.offline.onboard_eval import evaluate_forms
from gplq_ros.offline.onnx_export import export_artifact
from gplq_ros.offline.peers import nncf_int8_graph, peer_graphs
from gplq_ros.onboard.artifact import read_meta
from gplq_ros.onboard.engine import load
from gplq_ros.onboard.paths import default_vocab
from gplq_ros.onboard.pipeline import PipelineConfig
from gplq_ros.onboard.vocabulary import Vocabulary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('artifacts', nargs='+', type=Path)
    ap.add_argument('--runs', type=int, default=40)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--out', type=Path, default=Path('out/pareto'))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    ext = load_extractor()
    vocab = Vocabulary.load(default_vocab(), ext.weights_sha256)
    calib = load_images(default_calibration_images())
    fp32, dyn, _ = peer_graphs(ext, args.out, args.size, calib, static_crops=4)
    nncf = nncf_int8_graph(fp32, args.out / f'nncf_int8_{args.size}.onnx', calib, 64)
    forms = {'FP32': fp32, 'ORT dynamic int8': dyn, 'NNCF int8': nncf}
    info = {n: {'file_mb': p.stat().st_size / 1e6} for n, p in forms.items()}
    cfg = PipelineConfig(long_side=args.size)
    for a in args.artifacts:
        name = a.stem
        r = export_artifact(a, args.out / f'{name}_{args.size}.onnx', (args.size, args.size), cfg, packed=False,
                            force=True, expect_weights_sha256=ext.weights_sha256)
        forms[name] = r['path']
        meta = read_meta(a)
        layers = meta['layers'].values()
        total = sum(np.prod(i['shape']) for i in layers)
        four = sum(np.prod(i['shape']) for i in layers if i['bits'] == 4)
        grids = sorted({i.get('grid', 'uniform') for i in layers if i['bits'] == 4})
        info[name] = {'file_mb': a.stat().st_size / 1e6, 'graph_mb': r['path'].stat().st_size / 1e6,
                      'calibration_s': (meta.get('metrics') or {}).get('timing_s', {}).get('total'),
                      'four_bit_fraction': float(four / total), 'grids': grids}
    fp_mb = info['FP32']['file_mb']
    for v in info.values():
        v['x_fp32'] = v['file_mb'] / fp_mb
    sources = {n: load_images(p) for n, p in default_evaluation_sources().items()}
    results = evaluate_forms(forms, sources, vocab.centers, threads=args.threads)
    # latency: graph only, prepared tensors, both backends, interleaved
    tensors = [c.numpy() for c in make_crops(calib, 8, seed=3, size=args.size)]
    engines = {(n, b): load(p, threads=args.threads, backend=b) for n, p in forms.items()
               for b in ('openvino', 'onnxruntime')}
    lat = interleaved({k: e.runner for k, e in engines.items()}, tensors, args.runs)
    dyn_ms = lat[('ORT dynamic int8', 'onnxruntime')][0]
    for (n, b), (med, p95) in lat.items():
        info[n][f'{b}_ms'] = med
        info[n][f'{b}_x_ort_dyn'] = med / dyn_ms
    rows = {n: dict(v, sources={}) for n, v in info.items()}
    for r in results:
        rows[r.form]['sources'][r.source] = dict(r.fidelity, R1=r.recall['R@1'], queries=r.queries)
    srcs = list(sources)
    pooled_fp = np.mean([rows['FP32']['sources'][s]['R1'] for s in srcs])
    head = ('| form | MB (x FP32) | 4-bit | calib. s | ' + ' | '.join(
        f'{s}: tok cos / SSIM / corners / desc cos / R@1' for s in srcs)
        + ' | R@1 pooled (FP32 - form) | OpenVINO ms | ORT ms (x ORT dyn int8) |')
    lines = [head, '|' + '---|' * (7 + len(srcs))]
    for n, v in rows.items():
        cells = []
        for s in srcs:
            f = v['sources'][s]
            cells.append(f'{f["token_cosine"]:.4f} / {f["boundary_ssim"]:.4f} / {f["corner_repeatability"]:.3f} / '
                         f'{f["descriptor_cosine"]:.4f} / {f["R1"]:.3f}')
        pooled = np.mean([v['sources'][s]['R1'] for s in srcs])
        v['R1_pooled'] = float(pooled)
        four = f'{v["four_bit_fraction"]:.2f}' if 'four_bit_fraction' in v else '-'
        cal = f'{v["calibration_s"]:.0f}' if v.get('calibration_s') else '-'
        lines.append(f'| {n} | {v["file_mb"]:.1f} ({v["x_fp32"]:.3f}) | {four} | {cal} | ' + ' | '.join(cells)
                     + f' | {pooled:.3f} ({pooled_fp - pooled:+.3f}) | {v["openvino_ms"]:.1f} | '
                     f'{v["onnxruntime_ms"]:.1f} ({v["onnxruntime_x_ort_dyn"]:.2f}) |')
    md = '\n'.join(lines)
    print(md)
    machine = {'cpus': os.cpu_count(), 'threads': args.threads, 'runs': args.runs, 'size': args.size}
    (args.out / 'pareto.json').write_text(json.dumps({'rows': rows, 'machine': machine}, indent=2, default=float))
    (args.out / 'pareto.md').write_text(md + '\n')


if __name__ == '__main__':
    main()
