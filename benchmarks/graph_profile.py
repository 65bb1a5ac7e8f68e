"""Where the time goes in an onboard graph, per backend.

usage: python benchmarks/graph_profile.py GRAPH.onnx [--backend onnxruntime|openvino] [--threads 2] [--runs 30]
                                                     [--precision f32|bf16] [--image PATH|random] [--nodes OP]
Runs the graph as the engine does after 5 warm-up runs (not counted) on a prepared camera-like
image (``--image``; ``random``: normal noise, which makes far more subnormal softmax outputs).
* onnxruntime: intra-op spinning off, MatMulAddFusion and QDQPropagationTransformer off for GPLQ
  graphs (as ``onboard.engine``); ORT's profiler, kernel time and share per op type;
  ``--nodes OP``: each node of that op type too.
* openvino: compiled with PERF_COUNT on; time and share per (layer type, kernel): the kernel
  names say whether a MatMul ran in int8 (``..._I8``) or float (``..._f32``/``_bf16``).
A packed GPLQ graph needs its artifact: use a --standalone export.
"""
import argparse
import collections
import json
import os
import time

import numpy as np
import onnx

from gplq_ros.onboard.engine import graph_meta
from gplq_ros.onboard.paths import default_images_dir
from gplq_ros.onboard.preprocess import prepare, read_rgb


# a held-out camera-like tile (not a calibration image)
DEFAULT_IMAGE = default_images_dir() / '2019_YELL_2_541000_4977000_image_crop.png'


def input_tensor(image: str, hw) -> np.ndarray:
    """The graph input: ``image`` prepared as the engine prepares a frame, or 'random' normal noise."""
    if image == 'random':
        return np.random.default_rng(0).standard_normal((1, 3, *hw)).astype(np.float32)
    return prepare(read_rgb(image), size=tuple(hw)).tensor


def profile_ort(graph: str, meta: dict, threads: int, runs: int, x: np.ndarray, nodes_of: str = None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry('session.intra_op.allow_spinning', '0')
    so.enable_profiling = True
    so.profile_file_prefix = 'ort_profile'
    disabled = ['MatMulAddFusion', 'QDQPropagationTransformer'] if meta.get('kind') == 'gplq' else []
    s = ort.InferenceSession(graph, so, disabled_optimizers=disabled)
    for _ in range(5 + runs):
        s.run(None, {'pixels': x})
    path = s.end_profiling()
    events = json.load(open(path))
    os.remove(path)
    starts = sorted(e['ts'] for e in events if e.get('cat') == 'Session' and e['name'] == 'model_run')
    total, count, per_node = collections.Counter(), collections.Counter(), collections.Counter()
    for e in events:
        if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time') and e['ts'] >= starts[5]:
            total[e['args']['op_name']] += e['dur'] / 1000
            count[e['args']['op_name']] += 1
            if e['args']['op_name'] == nodes_of:
                per_node[e['name'][:-len('_kernel_time')]] += e['dur'] / 1000
    return total, count, runs, None, per_node


def profile_openvino(graph: str, meta: dict, threads: int, runs: int, precision: str, x: np.ndarray):
    import openvino
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(graph), 'CPU', {
        'INFERENCE_NUM_THREADS': threads, 'NUM_STREAMS': 1, 'PERFORMANCE_HINT': 'LATENCY',
        'INFERENCE_PRECISION_HINT': precision, 'PERF_COUNT': True})
    req = compiled.create_infer_request()
    for _ in range(5):
        req.infer({'pixels': x})
    total, count = collections.Counter(), collections.Counter()
    wall = 0.0
    for _ in range(runs):
        t = time.perf_counter()
        req.infer({'pixels': x})
        wall += time.perf_counter() - t
        for info in req.profiling_info:
            key = f'{info.node_type} {info.exec_type}'
            total[key] += info.real_time.total_seconds() * 1e3
            count[key] += 1
    return total, count, runs, wall / runs * 1e3, {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('graph')
    ap.add_argument('--backend', default='onnxruntime', choices=('onnxruntime', 'openvino'))
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--runs', type=int, default=30)
    ap.add_argument('--precision', default='f32', choices=('f32', 'bf16'), help='openvino only')
    ap.add_argument('--image', default=str(DEFAULT_IMAGE), help="an image file, or 'random'")
    ap.add_argument('--nodes', default=None, help='onnxruntime: also list each node of this op type')
    args = ap.parse_args()
    meta = graph_meta(onnx.load(args.graph, load_external_data=False)) or {}
    if meta.get('packed_layers'):
        raise SystemExit('packed graph: export it with gplq_export --standalone to profile it alone')
    x = input_tensor(args.image, meta['input_hw'])
    if args.backend == 'onnxruntime':
        total, count, runs, wall, per_node = profile_ort(args.graph, meta, args.threads, args.runs, x, args.nodes)
    else:
        total, count, runs, wall, per_node = profile_openvino(args.graph, meta, args.threads, args.runs,
                                                              args.precision, x)
    all_ms = sum(total.values())
    print(f'{args.graph} ({meta.get("kind")}, input {meta.get("input_hw")}, {args.backend}, {args.threads} threads): '
          f'{all_ms / runs:.1f} ms/run in kernels' + (f', {wall:.1f} ms/run wall' if wall else ''))
    for op, ms in total.most_common(15):
        print(f'  {op:40s} {ms / runs:6.2f} ms {100 * ms / all_ms:5.1f} %  x{count[op] // runs}')
    if per_node:
        print(f'{args.nodes} nodes:')
        for name, ms in per_node.most_common():
            print(f'  {ms / runs * 1e3:7.0f} us  {name}')


if __name__ == '__main__':
    main()
