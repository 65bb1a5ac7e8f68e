"""Side-by-side fidelity of PTQ baselines and GPLQ at W4A8 and W4A4 (real weights,
calibration on the YELL orthophotos + DJI photo, evaluation on the held-out NEON
OSBS/SOAP tiles), plus calibration wall time / peak RSS and the peak RSS of one FP32
training step of the same model.

usage: python benchmarks/gplq_fidelity_table.py [--crops 256] [--out out/bench] [--bits w4a8 w4a4]
Each configuration runs in its own process (peak RSS is per process).
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CONFIGS = {
    'minmax PTQ': ['--method', 'minmax', '--weight-clip', 'minmax', '--weight-method', 'rtn'],
    'percentile PTQ': ['--method', 'percentile', '--weight-clip', 'mse', '--weight-method', 'rtn'],
    'GPLQ beta=0, no corner/edge': ['--method', 'gplq', '--beta', '0', '--lambda-corner', '0',
                                    '--lambda-edge', '0'],
    'GPLQ full': ['--method', 'gplq'],
}
COLS = ('final_cosine', 'boundary_ssim', 'corner_repeatability', 'descriptor_cosine', 'descriptor_top1')

TRAIN_STEP = '''
import resource, torch
torch.set_num_threads(2)
from gplq_ros.offline.backbone import load_extractor
from gplq_ros.offline.data import default_calibration_images, make_crops
from gplq_ros.offline.data import load_images
ext = load_extractor()
x = torch.cat(make_crops(load_images(default_calibration_images()), {batch}, 0))
ext.train().requires_grad_(True)
opt = torch.optim.AdamW(ext.parameters(), lr=1e-5)
with torch.no_grad():
    target = ext.block_tokens(x)[-1]
flipped = torch.flip(target.reshape(len(x), 16, 16, -1), dims=[2]).reshape_as(target)
loss = ((ext.block_tokens(torch.flip(x, dims=[3]))[-1] - flipped) ** 2).mean()
loss.backward()
opt.step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--crops', type=int, default=256)
    ap.add_argument('--bits', nargs='+', default=['w4a8', 'w4a4'])
    ap.add_argument('--out', type=Path, default=Path('out/bench'))
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--group-size', type=int, default=32,
                    help='weight group size passed to gplq_calibrate (0: per output channel); the table in '
                         'docs/benchmarks.md was measured with 32')
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS='2')
    rows = []
    for bits in args.bits:
        for name, extra in CONFIGS.items():
            tag = f'{bits}_' + name.split()[0].lower() + ('_ablation' if 'beta=0' in name else '')
            out = args.out / f'{tag}.safetensors'
            cmd = [sys.executable, '-m', 'gplq_ros.tools.calibrate', '--bits', bits, '--crops', str(args.crops),
                   '--batch', str(args.batch), '--group-size', str(args.group_size), '--out', str(out), '--force',
                   *extra]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                print(res.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f'{name} {bits} failed')
            rep = json.loads(out.with_suffix('.report.json').read_text())
            m = rep['metrics']
            row = {'bits': bits, 'config': name, 'artifact_mb': round(out.stat().st_size / 1e6, 2),
                   'wall_s': m['timing_s']['total'], 'stage1_s': m['timing_s']['stage1'],
                   'peak_rss_mb': m['peak_rss_mb'], 'drift': round(m['basin']['drift']['overall'], 4),
                   'alignment': round(m['gradient_alignment']['overall'], 4)}
            for c in COLS:
                row[c] = m['heldout'][c]['mean']
                row[c + '_min'] = m['heldout'][c]['min']
            rows.append(row)
            print(json.dumps(row), flush=True)
    res = subprocess.run([sys.executable, '-c', TRAIN_STEP.format(batch=args.batch)], capture_output=True,
                         text=True, env=env)
    train_rss = float(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None
    if train_rss is None:
        print(res.stderr[-2000:], file=sys.stderr)
    (args.out / 'table.json').write_text(json.dumps({'rows': rows, 'fp32_train_step_peak_rss_mb': train_rss,
                                                     'crops': args.crops, 'batch': args.batch}, indent=2))
    print(f'\ncalibration on {args.crops} crops, batch {args.batch}; held-out: 3 NEON OSBS/SOAP tiles x 5 views')
    print('| bits | config | final cos | boundary SSIM | corner rep. | descriptor cos | descriptor top-1 | '
          'drift | grad. align | wall s | peak RSS MB |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f'| {r["bits"]} | {r["config"]} | {r["final_cosine"]:.4f} | {r["boundary_ssim"]:.4f} | '
              f'{r["corner_repeatability"]:.3f} | {r["descriptor_cosine"]:.4f} | {r["descriptor_top1"]:.3f} | '
              f'{r["drift"]:.3f} | '
              f'{r["alignment"]:.3f} | {r["wall_s"]:.0f} | {r["peak_rss_mb"]:.0f} |')
    print(f'FP32 training step (batch {args.batch}, AdamW) peak RSS: {train_rss:.0f} MB' if train_rss else
          'FP32 training step failed')


if __name__ == '__main__':
    main()
