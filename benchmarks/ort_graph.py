"""Graph-only latency of ONNX graphs against a reference graph, interleaved in one process.

usage: python benchmarks/ort_graph.py REF.onnx GRAPH.onnx [GRAPH2.onnx ...] [--runs 100] [--threads 2]
                                      [--backend onnxruntime|openvino] [--ref-backend onnxruntime|openvino]
e.g. REF = ORT ``quantize_dynamic`` int8 of the FP32 graph, GRAPH = a GPLQ export of the same input size.

Each graph is opened by the onboard engine (``onboard.engine.load``: its session settings,
a packed graph completed from its artifact), then every round runs each graph once on the same
prepared input (``--image``, by default a held-out camera-like tile; ``--image random``: normal
noise, which makes far more subnormal softmax outputs than a real image), in a shuffled order,
so that clock and load changes hit all alike.
Prints median and p90 ms per graph and the ratio of medians to REF; ``--json`` writes them.
"""
import argparse
import json
import os
from pathlib import Path

import numpy as np
from graph_profile import DEFAULT_IMAGE, input_tensor      # the sibling script (run from benchmarks/)

from gplq_ros.onboard.engine import load
from gplq_ros.onboard.stats import interleaved_ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('ref')
    ap.add_argument('graphs', nargs='+')
    ap.add_argument('--runs', type=int, default=100)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--backend', default='onnxruntime', choices=('onnxruntime', 'openvino'))
    ap.add_argument('--ref-backend', default='onnxruntime', choices=('onnxruntime', 'openvino'))
    ap.add_argument('--image', default=str(DEFAULT_IMAGE), help="an image file, or 'random'")
    ap.add_argument('--json', type=Path, default=None)
    args = ap.parse_args()
    engines = {'ref': load(Path(args.ref), threads=args.threads, backend=args.ref_backend, warmup=0)}
    for i, g in enumerate(args.graphs):
        engines[f'{i}'] = load(Path(g), threads=args.threads, backend=args.backend, warmup=0)
    hw = engines['ref'].input_hw
    assert all(e.input_hw == hw for e in engines.values()), 'all graphs must have the same input size'
    x = input_tensor(args.image, hw)
    times = interleaved_ms({k: e.runner for k, e in engines.items()}, [x], args.runs, warmup=3)
    ref = float(np.median(times['ref']))
    print(f'{hw[0]}x{hw[1]}, {args.threads} threads, {args.runs} interleaved rounds, load {os.getloadavg()[0]:.2f}')
    out = {}
    for k, e in engines.items():
        med, p90 = float(np.median(times[k])), float(np.percentile(times[k], 90))
        name = args.ref if k == 'ref' else args.graphs[int(k)]
        out[name] = {'backend': e.backend, 'median_ms': med, 'p90_ms': p90, 'x_ref': med / ref}
        print(f'  {med:7.2f} ms (p90 {p90:7.2f})  x{med / ref:.3f}  {e.backend:11s} {name}')
    if args.json:
        args.json.write_text(json.dumps({'input_hw': list(hw), 'threads': args.threads, 'runs': args.runs,
                                         'graphs': out}, indent=2) + '\n')


if __name__ == '__main__':
    main()
