"""gplq_eval_bag BAG: evaluate a recorded flight (a gplq_record bag, or one recorded with
``ros2 bag record``; mcap or sqlite3).

Writes ``<out>/summary.json``, ``drift.png`` and a few frame pictures and prints the
figures; see ``gplq_ros.bringup.bag_report``. The localizer's poses are compared with the
bag's ``*/true_pose`` (simulated flight, geo-referenced photos) or, with ``--reference-fix
TOPIC --map PLACE_MAP``, with a GNSS track (sensor_msgs/NavSatFix) put in the map's frame by
the map's georeference: ``gplq_eval_bag BAG --reference-fix /gps/fix --map area.safetensors``.
"""
import argparse
import sys
from pathlib import Path

from gplq_ros.bringup.bag_report import evaluate, map_fix_reference, print_summary, write_report
from gplq_ros.onboard.engine import load
from gplq_ros.onboard.paths import default_vocab
from gplq_ros.tools.common import cli


@cli('gplq_eval_bag')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_eval_bag', description=__doc__.split('\n\n')[0])
    ap.add_argument('bag', type=Path)
    ap.add_argument('--out', type=Path, default=None, help='report directory (default: <bag>_report)')
    ap.add_argument('--camera-topic', default=None, help='camera Image topic (default: the only one)')
    ap.add_argument('--frames', type=int, default=4, help='frames to draw (camera | boundary | corners)')
    ap.add_argument('--reference-model', type=Path, default=None,
                    help='FP32 graph (gplq_export --fp32): recompute drift from the bag instead of reading the '
                         "monitor's status (for bags recorded without monitor_node)")
    ap.add_argument('--vocabulary', type=Path, default=None, help='vocabulary for descriptor drift (with '
                    '--reference-model; default: the $GPLQ_HOME one if present)')
    ap.add_argument('--check-every', type=int, default=10, help='with --reference-model: every n-th frame')
    ap.add_argument('--reference-fix', default=None, metavar='TOPIC',
                    help='sensor_msgs/NavSatFix topic (your GNSS) as the reference of the localizer\'s poses, '
                         'instead of a */true_pose; needs --map')
    ap.add_argument('--map', type=Path, default=None, metavar='PLACE_MAP',
                    help='with --reference-fix: the geo-referenced place map (gplq_map) the localizer used; its '
                         'georeference puts latitude/longitude in the map frame')
    ap.add_argument('--max-gap', type=float, default=1.0, metavar='S',
                    help='with --reference-fix: a pose is compared only when fix samples lie within this many '
                         'seconds before and after its stamp (default %(default)s); the others are counted')
    args = ap.parse_args(argv)
    if (args.reference_fix is None) != (args.map is None):
        ap.error('--reference-fix and --map go together')
    out = args.out or args.bag.with_name(args.bag.name + '_report')
    try:
        reference = None
        if args.reference_model is not None:
            vocab = args.vocabulary or (default_vocab() if default_vocab().is_file() else None)
            reference = load(args.reference_model, vocab, threads=2)
            if reference.kind != 'fp32':
                raise ValueError(f'--reference-model {args.reference_model}: kind={reference.kind!r}, '
                                 'not an FP32 graph')
        if args.check_every < 1:
            raise ValueError(f'--check-every {args.check_every}: must be >= 1')
        fix_reference = map_fix_reference(args.reference_fix, args.map, args.max_gap) \
            if args.reference_fix is not None else None
        summary, pics = evaluate(args.bag, args.camera_topic, args.frames, reference, args.check_every, fix_reference)
    except (ValueError, FileNotFoundError) as e:
        print(f'gplq_eval_bag: error: {e}', file=sys.stderr)
        return 2
    write_report(summary, pics, out)
    print_summary(summary, out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
