"""gplq_bench: latency, size and fidelity of the onboard options, side by side, interleaved in one process.

Rows: torch FP32 eager, then FP32, ORT dynamic int8, ORT static int8 QDQ, NNCF int8 and
each given GPLQ artifact, each on ONNX Runtime and on OpenVINO; see
``gplq_ros.offline.benchmark`` for what each column measures.
"""
import argparse
import json
import sys
from pathlib import Path

from gplq_ros.offline.benchmark import run_benchmark
from gplq_ros.onboard.engine import BACKENDS
from gplq_ros.onboard.paths import default_onboard_artifact
from gplq_ros.tools.common import cli


def input_size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size {text!r}: expected HxW, e.g. 168x224') from None
    return h, w


@cli('gplq_bench')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_bench', description=__doc__.split('\n\n')[0])
    ap.add_argument('--artifacts', nargs='*', type=Path, default=None,
                    help='GPLQ artifacts (default: the onboard artifact of make demo, if built)')
    ap.add_argument('--sizes', nargs='+', type=input_size, default=[(224, 224), (168, 224)],
                    help='graph input sizes HxW (168x224 is the 640x480 camera)')
    ap.add_argument('--threads', nargs='+', type=int, default=[1, 2])
    ap.add_argument('--backends', nargs='+', choices=[b for b in BACKENDS if b != 'auto'],
                    default=['onnxruntime', 'openvino'])
    ap.add_argument('--runs', type=int, default=30, help='interleaved rounds per (size, threads)')
    ap.add_argument('--nncf-crops', type=int, default=64, help='calibration crops of the NNCF int8 peer')
    ap.add_argument('--workdir', type=Path, default=Path('out/bench_runtime'))
    ap.add_argument('--json', type=Path, default=None)
    args = ap.parse_args(argv)
    arts = args.artifacts
    if arts is None:
        arts = [p for p in (default_onboard_artifact(),) if p.is_file()]
    res = run_benchmark(arts, args.sizes, args.threads, args.runs, args.backends, args.workdir, args.nncf_crops)
    m = res['machine']
    print(f'gplq_bench: {args.runs} interleaved rounds, image -> outputs (preprocess, graph, heads) on a 640-px '
          f'frame; {m["cpus"]} CPUs at {m["ghz"]:.2f} GHz; int8 limit (GMAC/s, {max(args.threads)} cores): '
          + ', '.join(f'{k} {v:.0f}' for k, v in m['int8_limit_gmac_per_s'].items()))
    print('| engine | backend | input | threads | median ms | p95 ms | x ORT dyn int8 | graph ms | GMAC/s | '
          'file MB | RSS MB |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for r in res['rows']:
        gm = f'{r["graph_median_ms"]:.1f} | {r["gmac_per_s"]:.0f}' if r['graph_median_ms'] else '- | -'
        print(f'| {r["engine"]} | {r["backend"]} | {r["input_hw"][0]}x{r["input_hw"][1]} | {r["threads"]} | '
              f'{r["median_ms"]:.1f} | {r["p95_ms"]:.1f} | {r["x_ort_dynamic_int8"]:.2f} | {gm} | '
              f'{r["file_mb"] or "-"} | {r.get("rss_mb") or "-"} |')
    print('\nfidelity to the torch FP32 reference (held-out NEON tiles, 224x224):')
    print('| engine | backend | token cosine | boundary SSIM |\n|---|---|---|---|')
    for name, f in res['fidelity'].items():
        print(f'| {name} | {f["token_cosine"]:.4f} | {f["boundary_ssim"]:.4f} |')
    print('\nper-part median ms of one frame:')
    for name, parts in res['stages'].items():
        print(f'  {name}: ' + ', '.join(f'{k} {v:.2f}' for k, v in parts.items()))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
