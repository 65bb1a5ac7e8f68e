"""Where the time goes in an onboard graph: ONNX Runtime's profiler, kernel time per op type.

usage: python benchmarks/ort_profile.py GRAPH.onnx [--threads 2] [--runs 30]
Runs the graph as the engine does (intra-op spinning off; MatMulAddFusion off for GPLQ
graphs) on a random input after 5 warm-up runs and prints ms per run and share per op type.
A packed GPLQ graph needs its artifact: use a --standalone export.
"""
import argparse
import collections
import json
import os

import numpy as np
import onnx
import onnxruntime as ort

from gplq_ros.onboard.engine import graph_meta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('graph')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--runs', type=int, default=30)
    args = ap.parse_args()
    meta = graph_meta(onnx.load(args.graph, load_external_data=False)) or {}
    if meta.get('packed_layers'):
        raise SystemExit('packed graph: export it with gplq_export --standalone to profile it alone')
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
    so.add_session_config_entry('session.intra_op.allow_spinning', '0')
    so.enable_profiling = True
    so.profile_file_prefix = 'ort_profile'
    s = ort.InferenceSession(args.graph, so,
                             disabled_optimizers=['MatMulAddFusion'] if meta.get('kind') == 'gplq' else [])
    x = np.random.default_rng(0).standard_normal(list(s.get_inputs()[0].shape)).astype(np.float32)
    for _ in range(5 + args.runs):
        s.run(None, {'pixels': x})
    path = s.end_profiling()
    events = json.load(open(path))
    os.remove(path)
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time'):
            total[e['args']['op_name']] += e['dur']
            count[e['args']['op_name']] += 1
    runs = 5 + args.runs
    all_us = sum(total.values())
    print(f'{args.graph} ({meta.get("kind")}, input {meta.get("input_hw")}, {args.threads} threads): '
          f'{all_us / runs / 1000:.1f} ms/run in kernels')
    for op, us in total.most_common(12):
        print(f'  {op:26s} {us / runs / 1000:6.2f} ms {100 * us / all_us:5.1f} %  x{count[op] // runs}')


if __name__ == '__main__':
    main()
