"""gplq_flight_demo: the full onboard job on this machine.

1. a W4A8 GPLQ artifact (rotated residual stream, int8 q.k attention, per-output-channel weights; GPTQ act-order and
   the most sensitive 25 % of the Linear weights at 8 bits, learned rounding: ``offline.api.ONBOARD_SPEC``,
   ``ONBOARD_CALIBRATION``) in $GPLQ_HOME/onboard, calibrated if none is cached (about 20 minutes on 2 cores);
2. the onboard graphs for 640x480 cameras: the packed GPLQ graph and the FP32 reference,
   exported if missing or stale (``offline.api.ensure_onboard_models``);
3. the bringup of ``gplq_ros.bringup.description`` (simulated flight over a NEON orthophoto,
   feature_node, monitor_node) for ``--duration`` seconds while gplq_record records a bag;
4. the bag evaluation (``bringup.bag_report``): frames in/out, p50/p95 end-to-end latency,
   drift, report.
"""
import argparse
import sys
import time
from pathlib import Path

from gplq_ros.bringup import bag_report
from gplq_ros.bringup.processes import commands, parse_overrides, start, stop, watch
from gplq_ros.offline.api import ensure_onboard_models
from gplq_ros.tools.common import cli


@cli('gplq_flight_demo')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_flight_demo', description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', type=Path, default=Path('out/flight'))
    ap.add_argument('--duration', type=float, default=30.0, help='seconds of simulated flight')
    ap.add_argument('overrides', nargs='*', help='extra launch arguments name:=value (see gplq_up)')
    args = ap.parse_args(argv)
    models = ensure_onboard_models(lambda text: print(f'gplq_flight_demo: {text}', flush=True))
    bags = args.out / 'bags'
    overrides = dict(models, record_bag='true', bag_dir=str(bags), **parse_overrides(args.overrides))
    stamp = time.strftime('%Y%m%d_%H%M%S')
    cmds = commands(overrides, stamp)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f'gplq_flight_demo: flying for {args.duration:.0f} s: ' + ', '.join(n for n, _ in cmds)
          + f' (logs: {args.out / "nodes.log"})', flush=True)
    with open(args.out / 'nodes.log', 'wb') as log:
        procs = start(cmds, stdout=log, overrides=overrides)
        try:
            dead = watch(procs, args.duration + 5, fails=lambda returncode: True)   # + start-up of the nodes
            if dead:
                raise RuntimeError(f'{[n for n, _ in dead]} exited early; see {args.out / "nodes.log"}')
        finally:
            stop(procs)
    summary, pics = bag_report.evaluate(bags / f'gplq_{stamp}')
    report = args.out / 'report'
    bag_report.write_report(summary, pics, report)
    bag_report.print_summary(summary, report)
    return 0


if __name__ == '__main__':
    sys.exit(main())
