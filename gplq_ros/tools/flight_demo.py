"""gplq_flight_demo: the full onboard job on this machine.

1. a W4A8 GPLQ artifact (per-output-channel weights, the fast int8 form) in
   $GPLQ_HOME/onboard, calibrated with gplq_calibrate if none is cached;
2. the onboard graphs for 640x480 cameras (168x224): the packed GPLQ graph and the FP32
   reference, exported if missing or stale;
3. the node graph of ``gplq_ros.graph`` (simulated flight over a NEON orthophoto,
   feature_node, monitor_node) for ``--duration`` seconds while gplq_record records a bag;
4. gplq_eval_bag on that bag: frames in/out, p50/p95 end-to-end latency, drift, report.
"""
import argparse
import sys
import time
from pathlib import Path

from .common import cli

ARTIFACT = 'w4a8_gplq_perchannel.safetensors'


def ensure_models() -> dict:
    """The artifact and both graphs where the node graph looks for them by default."""
    from ..graph import default_models, onboard_dir
    from ..runtime.artifact import read_meta
    onboard = onboard_dir()
    onboard.mkdir(parents=True, exist_ok=True)
    art = onboard / ARTIFACT
    if not art.is_file():
        print(f'gplq_flight_demo: calibrating {art} (W4A8, per-output-channel weights; a few minutes)', flush=True)
        from .calibrate import main as calibrate
        if calibrate(['--bits', 'w4a8', '--group-size', '0', '--out', str(art)]) != 0:
            raise RuntimeError('calibration failed')
    checksum = read_meta(art)['checksum']
    models = default_models()
    graph_path, fp32_path = Path(models['model']), Path(models['reference_model'])
    stale = True
    if graph_path.is_file():
        import onnx

        from ..runtime.engine import graph_meta
        meta = graph_meta(onnx.load(str(graph_path), load_external_data=False)) or {}
        stale = meta.get('artifact_checksum') != checksum
    if stale:
        from ..runtime.export import export_artifact
        export_artifact(art, graph_path, (168, 224), force=True)
        print(f'gplq_flight_demo: exported {graph_path}', flush=True)
    if not fp32_path.is_file():
        from ..model.backbone import load_extractor
        from ..runtime.export import export_onnx
        export_onnx(load_extractor(), fp32_path, (168, 224), kind='fp32')
        print(f'gplq_flight_demo: exported {fp32_path}', flush=True)
    return models


@cli('gplq_flight_demo')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_flight_demo', description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', type=Path, default=Path('out/flight'))
    ap.add_argument('--duration', type=float, default=30.0, help='seconds of simulated flight')
    ap.add_argument('overrides', nargs='*', help='extra launch arguments name:=value (see gplq_up)')
    args = ap.parse_args(argv)
    from . import eval_bag, up
    models = ensure_models()
    bags = args.out / 'bags'
    overrides = dict(models, record_bag='true', bag_dir=str(bags), **up.parse_overrides(args.overrides))
    stamp = time.strftime('%Y%m%d_%H%M%S')
    cmds = up.commands(overrides, stamp)
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / 'nodes.log', 'wb')
    print(f'gplq_flight_demo: flying for {args.duration:.0f} s: ' + ', '.join(n for n, _ in cmds)
          + f' (logs: {args.out / "nodes.log"})', flush=True)
    procs = up.start(cmds, stdout=log)
    try:
        dead = up.watch(procs, args.duration + 5, fails=lambda returncode: True)   # + start-up of the nodes
        if dead:
            raise RuntimeError(f'{[n for n, _ in dead]} exited early; see {args.out / "nodes.log"}')
    finally:
        up.stop(procs)
        log.close()
    bag = bags / f'gplq_{stamp}'
    summary, pics = eval_bag.evaluate(bag)
    report = args.out / 'report'
    eval_bag.write_report(summary, pics, report)
    eval_bag.print_summary(summary, report)
    return 0


if __name__ == '__main__':
    sys.exit(main())
