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
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import cli

ARTIFACT = 'w4a8_gplq_perchannel.safetensors'


def ensure_models(onboard: Path) -> dict:
    from ..runtime.artifact import read_meta
    onboard.mkdir(parents=True, exist_ok=True)
    art = onboard / ARTIFACT
    if not art.is_file():
        print(f'gplq_flight_demo: calibrating {art} (W4A8, per-output-channel weights; a few minutes)', flush=True)
        from .calibrate import main as calibrate
        if calibrate(['--bits', 'w4a8', '--group-size', '0', '--out', str(art)]) != 0:
            raise RuntimeError('calibration failed')
    checksum = read_meta(art)['checksum']
    graph_path, fp32_path = onboard / 'w4a8_168x224.onnx', onboard / 'fp32_168x224.onnx'
    stale = True
    if graph_path.is_file():
        import onnx
        meta = json.loads({p.key: p.value for p in onnx.load(str(graph_path), load_external_data=False)
                           .metadata_props}.get('gplq_ros', '{}'))
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
    return {'model': str(graph_path), 'reference_model': str(fp32_path)}


@cli('gplq_flight_demo')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_flight_demo', description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', type=Path, default=Path('out/flight'))
    ap.add_argument('--duration', type=float, default=30.0, help='seconds of simulated flight')
    ap.add_argument('overrides', nargs='*', help='extra launch arguments name:=value (see gplq_up)')
    args = ap.parse_args(argv)
    from .. import graph
    from ..paths import gplq_home
    from . import eval_bag, up
    models = ensure_models(gplq_home() / 'onboard')
    bags = args.out / 'bags'
    overrides = dict(models, record_bag='true', bag_dir=str(bags), **up.parse_overrides(args.overrides))
    stamp = time.strftime('%Y%m%d_%H%M%S')
    cmds = up.commands(overrides, stamp)
    env = dict(os.environ)
    for k, v in graph.environment().items():
        env.setdefault(k, v)
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / 'nodes.log', 'wb')
    print(f'gplq_flight_demo: flying for {args.duration:.0f} s: ' + ', '.join(n for n, _ in cmds)
          + f' (logs: {args.out / "nodes.log"})', flush=True)
    procs = [(n, subprocess.Popen(c, env=env, stdout=log, stderr=subprocess.STDOUT)) for n, c in cmds]
    try:
        end = time.monotonic() + args.duration + 5     # + start-up of the nodes
        while time.monotonic() < end:
            time.sleep(0.5)
            dead = [n for n, p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f'{dead} exited early; see {args.out / "nodes.log"}')
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
