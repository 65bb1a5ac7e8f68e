"""gplq_flight_demo: the full onboard job on this machine.

1. a W4A8 GPLQ artifact (rotated residual stream, int8 q.k attention, 4-bit codes decoding into per-output-channel
   int8 weights, the most sensitive 25 % of the Linear weights at 8 bits: ``offline.api.ONBOARD_RECIPES``) in
   $GPLQ_HOME/onboard, calibrated if none is cached: ``--calibration fast`` (default) within 5 minutes on 2 cores,
   ``--calibration best`` about 20 minutes; a progress line per stage with the time left;
2. the onboard graphs for 640x480 cameras: the packed GPLQ graph and the FP32 reference,
   exported if missing or stale (``offline.api.ensure_onboard_models``);
3. the place map of the flight's orthophoto (``DEMO_MAP``, gplq_map's library call with the FP32
   graph), built if none is cached (about 4 minutes on 2 cores);
4. the bringup of ``gplq_ros.bringup.description`` (simulated flight over a NEON orthophoto,
   feature_node, monitor_node, localizer_node) for ``--duration`` seconds while gplq_record
   records a bag;
5. the bag evaluation (``bringup.bag_report``): frames in/out, p50/p95 end-to-end latency,
   drift, position error of the localizer against the true track, report.
"""
import argparse
import sys
import time
from pathlib import Path

from gplq_ros.bringup import bag_report
from gplq_ros.bringup.processes import commands, parse_overrides, start, stop, stoppable_by_signals, watch
from gplq_ros.offline.api import ONBOARD_RECIPES, ensure_onboard_models
from gplq_ros.offline.progress import ProgressLog
from gplq_ros.onboard.flight import DEFAULT_ORTHO
from gplq_ros.onboard.paths import default_images_dir, default_vocab, gplq_home
from gplq_ros.onboard.mapbuild import build_map_file
from gplq_ros.onboard.placemap import MapConfig, PlaceMap
from gplq_ros.onboard.preprocess import read_rgb
from gplq_ros.tools.common import cli

# the simulated flight's camera at its mean height (the localizer's refinement finds the height), 8 m grid,
# 8 headings (benchmarks/localize_flight.py)
DEMO_MAP = MapConfig(stride_m=8.0, headings=8, heights_m=(40.0,), gsd_m=0.1)


def ensure_demo_map(reference_model: str, log) -> Path:
    path = gplq_home() / 'onboard' / f'map_{Path(DEFAULT_ORTHO).stem}_s8_h8_z40.safetensors'
    if path.is_file():
        PlaceMap.load(path)       # a clear error if it is from another gplq_ros version
        return path
    log(f'building the place map of {DEFAULT_ORTHO} ({DEMO_MAP.stride_m:g} m grid, {DEMO_MAP.headings} headings, '
        f'heights {DEMO_MAP.heights_m} m) with {Path(reference_model).name}')
    lines = ProgressLog(every=10, emit=log, units={'place map': 'tiles'})

    def progress(i, n):
        lines('place map', i, n)
    build_map_file(default_images_dir() / DEFAULT_ORTHO, path, Path(reference_model), default_vocab(), DEMO_MAP,
                   progress=progress)
    return path


@cli('gplq_flight_demo')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_flight_demo', description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', type=Path, default=Path('out/flight'))
    ap.add_argument('--duration', type=float, default=30.0, help='seconds of simulated flight')
    ap.add_argument('--calibration', choices=sorted(ONBOARD_RECIPES), default='fast',
                    help='the W4A8 artifact\'s recipe, if it has to be calibrated: ' +
                    '; '.join(f'{k}: {r.about}' for k, r in ONBOARD_RECIPES.items()).replace('%', '%%'))   # argparse
    ap.add_argument('overrides', nargs='*', help='extra launch arguments name:=value (see gplq_up)')
    args = ap.parse_args(argv)

    def say(text):
        print(f'gplq_flight_demo: {text}', flush=True)
    models = ensure_onboard_models(say, args.calibration)
    user = parse_overrides(args.overrides)            # the user's launch arguments win
    bags = Path(user.get('bag_dir', args.out / 'bags'))
    overrides = dict(models, record_bag='true', bag_dir=str(bags))
    # place_map:= (empty) flies without the localizer; photos:= of another place need their own map
    if 'place_map' not in user and not user.get('photos'):
        overrides['place_map'] = str(ensure_demo_map(models['reference_model'], say))
    overrides.update(user)
    stamp = time.strftime('%Y%m%d_%H%M%S')
    cmds = commands(overrides, stamp)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f'gplq_flight_demo: flying for {args.duration:.0f} s: ' + ', '.join(n for n, _ in cmds)
          + f' (logs: {args.out / "nodes.log"})', flush=True)
    stoppable_by_signals()
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
    if summary.get('localization', {}).get('true_track') and not overrides.get('photos'):
        # the tracks again, over the simulated flight's orthophoto
        bag_report.track_picture(summary['localization'], report / 'track.png',
                                 read_rgb(default_images_dir() / DEFAULT_ORTHO), DEMO_MAP.gsd_m)
    bag_report.print_summary(summary, report)
    return 0


if __name__ == '__main__':
    sys.exit(main())
