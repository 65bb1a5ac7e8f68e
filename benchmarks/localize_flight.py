"""GNSS-free localization over a simulated flight, FP32 vs the onboard quantized graph.

For each flight: build (or reuse) the place map of the orthophoto with the FP32 graph
(gplq_map's library call), render the flight's frames (``onboard.flight``, 10 Hz), run
each graph's descriptor on every frame, run the ``Localizer`` on the descriptors with the
frame times, and print the figures of ``localize.summarize`` side by side. Descriptors
are cached under --out so that localizer settings can be compared without the ViT.

    PYTHONPATH=. .venv/bin/python benchmarks/localize_flight.py --flight demo --frames 300
    PYTHONPATH=. .venv/bin/python benchmarks/localize_flight.py --flight vegas --frames 300

Flights: ``demo`` = the demo orthophoto (NEON YELL, 10 cm; used in calibration and the
vocabulary: for tuning only), ``vegas`` = SpaceNet WorldView pan of Las Vegas (its GeoTIFF:
2.7e-6 deg/px = 0.30 m north-south, 0.24 m east-west at 36 deg N; simulated as 0.3 m square
pixels; never used in calibration or the vocabulary), ``vegas_high`` = the same map flown at 55 m
mean height, 41-69 m (map built for 40 m), ``atlanta`` = SpaceNet WorldView pan of Atlanta (its
GeoTIFF: 0.5 m, UTM 16N; held out like vegas), ``atlanta_03`` = the same image taken as 0.3 m
(the first, mislabelled run: equivalent to flying 67 m over it, errors in units of 0.6 m).
"""
import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from gplq_ros.onboard.engine import load
from gplq_ros.onboard.flight import DEFAULT_ORTHO, Flight, FlightConfig
from gplq_ros.onboard.localize import Localizer, LocalizerConfig, summarize
from gplq_ros.onboard.paths import default_images_dir, default_onboard_models, default_vocab, gplq_home
from gplq_ros.onboard.mapbuild import build_map_file
from gplq_ros.onboard.placemap import MapConfig, PlaceMap
from gplq_ros.onboard.pipeline import single_thread_blas
from gplq_ros.onboard.preprocess import read_rgb

FLIGHTS = {
    'demo': (default_images_dir() / DEFAULT_ORTHO, 0.1, 40.0),
    'vegas': (gplq_home() / 'eval_images' / 'spacenet_worldview_pan' / 'vegas.png', 0.3, 40.0),
    'vegas_high': (gplq_home() / 'eval_images' / 'spacenet_worldview_pan' / 'vegas.png', 0.3, 55.0),
    'atlanta': (gplq_home() / 'eval_images' / 'spacenet_worldview_pan' / 'atlanta.png', 0.5, 40.0),
    'atlanta_03': (gplq_home() / 'eval_images' / 'spacenet_worldview_pan' / 'atlanta.png', 0.3, 40.0),
}


def descriptors(engine, flight: Flight, n: int, rate: float):
    out, bnd, truth = [], [], []
    for i in range(n):
        pose = flight.pose(i / rate)
        o = engine(flight.render(pose))
        out.append(o.descriptor)
        bnd.append(o.boundary)
        truth.append((pose.t, np.array([pose.x_m, pose.y_m]), pose.yaw))
    return np.stack(out), np.stack(bnd), truth


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--flight', choices=sorted(FLIGHTS), default='demo')
    ap.add_argument('--frames', type=int, default=300)
    ap.add_argument('--rate', type=float, default=10.0)
    ap.add_argument('--stride', type=float, default=8.0)
    ap.add_argument('--headings', type=int, default=8)
    ap.add_argument('--heights', type=float, nargs='+', default=[40.0])
    ap.add_argument('--out', type=Path, default=Path('out/localize'))
    ap.add_argument('--set', nargs='*', default=[], help='LocalizerConfig overrides name=value')
    args = ap.parse_args()
    image, gsd, height = FLIGHTS[args.flight]
    models = default_onboard_models()
    cfg = MapConfig(stride_m=args.stride, headings=args.headings, heights_m=tuple(args.heights), gsd_m=gsd)
    tag = f'{image.stem}_g{gsd:g}_s{args.stride:g}_h{args.headings}_z{"-".join(f"{h:g}" for h in args.heights)}'
    map_path = args.out / f'{tag}.safetensors'
    if not map_path.is_file():
        t0 = time.perf_counter()
        pm = build_map_file(image, map_path, models['reference_model'], default_vocab(), cfg,
                            progress=lambda i, n: print(f'{i}/{n} tiles', flush=True) if i % 1000 == 0 else None)
        print(f'map {map_path}: {pm.meta.n_tiles} tiles in {time.perf_counter() - t0:.0f} s, '
              f'PCA {pm.descriptors.shape[1]} dims explain {pm.meta.pca_explained:.3f}')
    pmap = PlaceMap.load(map_path)
    flight = Flight(read_rgb(image), FlightConfig(gsd_m=gsd, height_m=height))

    def typed(k, v):
        return v.lower() == 'true' if isinstance(getattr(LocalizerConfig(), k), bool) else \
            type(getattr(LocalizerConfig(), k))(v)
    lcfg = replace(LocalizerConfig(), **{k: typed(k, v) for k, v in (s.split('=', 1) for s in args.set)})
    single_thread_blas()        # as localizer_node: one BLAS thread
    rows = {}
    for name, graph in (('FP32', models['reference_model']), ('W4A8 (onboard)', models['model'])):
        cache = args.out / f'frames_{args.flight}_{Path(graph).stem}_{args.frames}.npz'
        if cache.is_file():
            z = np.load(cache)
            desc, bnd = z['desc'], z['boundary']
            truth = [(t, xy, yaw) for t, xy, yaw in zip(z['t'], z['xy'], z['yaw'])]
        else:
            engine = load(Path(graph), default_vocab())
            desc, bnd, truth = descriptors(engine, flight, args.frames, args.rate)
            np.savez(cache, desc=desc, boundary=bnd, t=[t for t, _, _ in truth], xy=[xy for _, xy, _ in truth],
                     yaw=[y for _, _, y in truth])
        loc = Localizer(pmap, lcfg)
        fixes, q_ms = [], []
        for d, b, (t, _, _) in zip(desc, bnd, truth):
            t0 = time.perf_counter()
            est = loc.update(d, float(t), b)
            q_ms.append((time.perf_counter() - t0) * 1e3)
            if est.fix:
                fixes.append((float(t), est.xy, est.cov, est.measurement.yaw))
        meas = [loc.measure(d, b) for d, b in zip(desc, bnd)]
        top1 = np.array([np.hypot(*(loc.map.poses[m.tile, :2] - xy)) for m, (_, xy, _) in zip(meas, truth)])
        per_frame = np.array([np.hypot(*(m.xy - xy)) for m, (_, xy, _) in zip(meas, truth)])
        s = summarize(len(desc), fixes, truth, float(truth[0][0]))
        s['retrieval_top1_within_5m'] = float(np.mean(top1 <= 5))
        s['retrieval_top1_within_10m'] = float(np.mean(top1 <= 10))
        s['measurement_within_5m'] = float(np.mean(per_frame <= 5))
        s['measurement_p50_m'] = float(np.median(per_frame))
        s['localizer_ms_p50'] = float(np.median(q_ms))
        s['localizer_ms_p95'] = float(np.percentile(q_ms, 95))
        rows[name] = s
    print(json.dumps({'flight': args.flight, 'map': pmap.meta.n_tiles, 'localizer': asdict(lcfg), 'rows': rows},
                     indent=1))


if __name__ == '__main__':
    main()
