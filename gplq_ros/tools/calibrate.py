"""gplq_calibrate: GPLQ calibration of DINOv2-S/14 -> versioned artifact + report.

Stage 1 learns activation quantizers (weights FP32, frozen) on random 224 px crops of real
images; stage 2 quantizes the weights (GPTQ or round-to-nearest, MSE-clipped scales);
then the basin drift, gradient alignment and held-out fidelity are measured and written
into the artifact's metadata and a report (JSON + PNG) next to it. The options below are
the fields of ``QuantSpec`` and ``CalibConfig`` and of its per-stage sub-configs
(``gplq_ros.offline.config``; ``gplq_ros.offline.api.calibrate_to_file``), plus the shorthands
``--bits wXaY`` and ``--method``; options that contradict each other are refused.
"""
import argparse
import sys
from pathlib import Path

from gplq_ros.offline.api import PROGRESS_UNITS, CalibrationJob, calibrate_to_file
from gplq_ros.offline.config import CalibConfig
from gplq_ros.offline.progress import ProgressLog
from gplq_ros.offline.spec import QuantSpec
from gplq_ros.tools.common import add_config_arguments, cli, config_from_args


@cli('gplq_calibrate')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_calibrate', description=__doc__.split('\n\n')[0])
    ap.add_argument('--images', nargs='+', default=None,
                    help='dirs/files (default: cached aerial images except the held-out OSBS/SOAP tiles)')
    ap.add_argument('--weights', type=Path, default=None)
    ap.add_argument('--out', type=Path, default=None,
                    help='artifact path (default $GPLQ_HOME/artifacts/<bits>_<method>.safetensors)')
    ap.add_argument('--force', action='store_true', help='overwrite --out')
    ap.add_argument('--no-report', action='store_true', help='skip held-out fidelity, report and pictures')
    ap.add_argument('--report-vocab', type=Path, default=None,
                    help='VLAD vocabulary for the report (default: the gplq_vocab one, if built; without '
                    'one the report says that the descriptor metrics are absent)')
    add_config_arguments(ap, QuantSpec, title='quantizer (QuantSpec)')
    add_config_arguments(ap, CalibConfig, title='calibration (CalibConfig)')
    args = ap.parse_args(argv)
    try:
        spec = config_from_args(QuantSpec, args)
        cfg = config_from_args(CalibConfig, args)
    except ValueError as e:
        ap.error(str(e))
    job = CalibrationJob(spec, cfg, args.images, args.weights, args.out, args.force, not args.no_report,
                         args.report_vocab)
    if job.artifact_path.exists() and not args.force:
        print(f'gplq_calibrate: {job.artifact_path} exists; pass --force to overwrite it', file=sys.stderr)
        return 1
    log = ProgressLog(f'gplq_calibrate {spec.tag} {cfg.method}', units=PROGRESS_UNITS)
    r = calibrate_to_file(job, log)
    m = r['metrics']
    al, basin = m['gradient_alignment'], m['basin']
    if al['overall'] < cfg.gamma_align or al['below_gamma']:
        print(f'gplq_calibrate: warning: gradient alignment {al["overall"]:.3f} overall; '
              f'{len(al["below_gamma"])} layers below gamma={cfg.gamma_align}', file=sys.stderr)
    if basin['over_eps']:
        print(f'gplq_calibrate: basin: {len(basin["over_eps"])} layers drift > eps={cfg.weights.eps_basin}'
              + (f'; kept at 8 bits: {basin["kept_8bit"]}' if basin['kept_8bit'] else ' (use --enforce-basin)'),
              file=sys.stderr)
    s = m['heldout']
    keys = ('final_cosine', 'boundary_ssim', 'corner_repeatability', 'descriptor_cosine')
    fig = ' '.join(f'{k} {s[k]["mean"]:.4f}' for k in keys if k in s)
    for why in sorted(set(v for k, v in m['heldout_absent'].items() if k in keys and not args.no_report)):
        names = ', '.join(k for k in keys if m['heldout_absent'].get(k) == why)
        print(f'gplq_calibrate: held-out {names}: {why}', file=sys.stderr)
    print(f'gplq_calibrate: {spec.tag} {cfg.method} -> {r["artifact"]} ({r["size_mb"]:.1f} MB) in {r["wall_s"]:.0f} s, '
          f'peak RSS {m["peak_rss_mb"]:.0f} MB; drift {basin["drift"]["overall"]:.3f}, '
          f'alignment {al["overall"]:.3f}; held-out {fig}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
