"""Where the time goes on OpenVINO: its per-node performance counters, grouped by layer and kernel type.

usage: python benchmarks/ov_profile.py GRAPH.onnx [--threads 2] [--runs 30] [--precision f32|bf16]
Compiles the graph as the engine does (backend=openvino) with PERF_COUNT on, runs a random input
``--runs`` times after 5 warm-up runs and prints ms per run and the share per (layer type, kernel):
the kernel names say whether a MatMul ran in int8 (``..._I8``) or float (``..._FP32``/``_BF16``).
A packed GPLQ graph needs its artifact: use a --standalone export.
"""
import argparse
import collections
import time

import numpy as np
import onnx
import openvino

from gplq_ros.onboard.engine import graph_meta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('graph')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--runs', type=int, default=30)
    ap.add_argument('--precision', default='f32', choices=('f32', 'bf16'))
    args = ap.parse_args()
    meta = graph_meta(onnx.load(args.graph, load_external_data=False)) or {}
    if meta.get('packed_layers'):
        raise SystemExit('packed graph: export it with gplq_export --standalone to profile it alone')
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(args.graph), 'CPU', {
        'INFERENCE_NUM_THREADS': args.threads, 'NUM_STREAMS': 1, 'PERFORMANCE_HINT': 'LATENCY',
        'INFERENCE_PRECISION_HINT': args.precision, 'PERF_COUNT': True})
    req = compiled.create_infer_request()
    h, w = meta['input_hw']
    x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    for _ in range(5):
        req.infer({'pixels': x})
    per = collections.Counter()
    count = collections.Counter()
    wall = 0.0
    for _ in range(args.runs):
        t = time.perf_counter()
        req.infer({'pixels': x})
        wall += time.perf_counter() - t
        for info in req.profiling_info:
            key = (info.node_type, info.exec_type)
            per[key] += info.real_time.total_seconds() * 1e3
            count[key] += 1
    total = sum(per.values())
    print(f'{args.graph}: {wall / args.runs * 1e3:.1f} ms/run wall, {total / args.runs:.1f} ms/run in nodes, '
          f'{args.threads} threads, {args.precision}')
    for (node, kernel), ms in per.most_common(15):
        print(f'  {node:24s} {kernel:32s} {ms / total * 100:5.1f} %  ({count[(node, kernel)] // args.runs} nodes)')


if __name__ == '__main__':
    main()
