"""gplq_bench: latency, size and fidelity of the onboard options, side by side, one process.

Rows: torch FP32 eager, ORT FP32, ORT dynamic int8, ORT static int8 QDQ and each given
GPLQ artifact; see ``gplq_ros.offline.benchmark`` for what each column measures.
"""
import argparse
import json
import os
import sys
from pathlib import Path

from gplq_ros.offline.benchmark import run_benchmark
from gplq_ros.tools.common import cli


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
    res = run_benchmark(args.artifacts, args.sizes, args.threads, args.runs, args.workdir)
    print(f'gplq_bench: {args.runs} runs each, image -> outputs (preprocess, graph, heads); '
          f'{os.cpu_count()} CPUs')
    print('| engine | px | threads | median ms | p95 ms | x torch FP32 | x ORT dyn int8 | file MB | RSS MB |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in res['rows']:
        print(f'| {r["engine"]} | {r["size"]} | {r["threads"]} | {r["median_ms"]:.1f} | {r["p95_ms"]:.1f} | '
              f'{r["x_torch_fp32"]:.2f} | {r["x_ort_dynamic_int8"]:.2f} | {r["file_mb"] or "-"} | '
              f'{r["rss_mb"] if r["rss_mb"] is not None else "-"} |')
    print('\nfidelity to FP32 (held-out NEON tiles, 224 px):')
    for name, f in res['fidelity'].items():
        print(f'  {name:32s} ' + '  '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
                                           for k, v in f.items()))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
