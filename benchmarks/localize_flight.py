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

The camera's imperfections (#19), applied to every rendered frame, in this order:
``--k1 K1 --k2 K2`` a radial lens distortion of the simulated camera (``FlightConfig.k1/k2``,
plumb_bob; k1 < 0 = barrel); ``--exposure X`` and ``--wb R B`` gains on the 8-bit values
(exposure on all channels, white balance on red and blue), clipped at 255, then ``--gamma G``
(``255 (v / 255)^G``); ``--undistort`` undistorts the frame with the flight's K and D before
the engine, as feature_node does with the camera's CameraInfo (``onboard.undistort``). With
any of these, the figures also compare each graph's outputs with those of the unmodified
frames (``agreement``: descriptor cosine, boundary-map NCC per frame; mean and min).
``--normalize`` normalizes every frame last, as feature_node's ``photometric: grayworld`` does,
and builds the map with ``MapConfig.photometric = 'grayworld'`` (``<map>_norm``; see
``onboard.photometric``); ``agreement`` then compares with the normalized unmodified frames.
``--graphs fp32`` runs one graph only; ``--threads`` sets the engine's threads.

The verification (``onboard.verify``) gets each frame as the engine got it (the camera's render
with the same changes and undistortion), as localizer_node gets feature_node's ``verify_image``;
``--no-verify`` runs without it (the boundary-map refinement), ``--verify-set name=value``
overrides ``VerifyConfig`` fields. ``--map-season`` builds the map from a changed copy of the
orthophoto (gamma 1.3, a warmer white balance, a blur and a colour shift towards brown: another
season or sensor than the flight's frames).
"""
import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np

from gplq_ros.onboard.engine import load
from gplq_ros.onboard.flight import DEFAULT_ORTHO, Flight, FlightConfig, odometry_along
from gplq_ros.onboard.localize import Localizer, LocalizerConfig, summarize
from gplq_ros.onboard.paths import default_images_dir, default_onboard_models, default_vocab, gplq_home
from gplq_ros.onboard.mapbuild import build_map_file
from gplq_ros.onboard.photometric import normalize_photometric
from gplq_ros.onboard.placemap import MapConfig, PlaceMap
from gplq_ros.onboard.pipeline import single_thread_blas
from gplq_ros.onboard.preprocess import read_rgb
from gplq_ros.onboard.undistort import Undistorter
from gplq_ros.onboard.verify import VerifyConfig

FLIGHTS = {
    'demo': (default_images_dir() / DEFAULT_ORTHO, 0.1, 40.0),
    'vegas': (gplq_home() / 'eval_images' / 'spacenet_worldview_pan' / 'vegas.png', 0.3, 40.0),
    'vegas_high': (gplq_home() / 'eval_images' / 'spacenet_worldview_pan' / 'vegas.png', 0.3, 55.0),
    'atlanta': (gplq_home() / 'eval_images' / 'spacenet_worldview_pan' / 'atlanta.png', 0.5, 40.0),
    'atlanta_03': (gplq_home() / 'eval_images' / 'spacenet_worldview_pan' / 'atlanta.png', 0.3, 40.0),
}


def photometric(rgb: np.ndarray, exposure: float = 1.0, wb=(1.0, 1.0), gamma: float = 1.0) -> np.ndarray:
    """Exposure and white-balance gains on the 8-bit values (clipped), then a gamma."""
    gains = np.array([exposure * wb[0], exposure, exposure * wb[1]], np.float32)
    v = np.clip(rgb.astype(np.float32) * gains, 0, 255)
    if gamma != 1.0:
        v = 255 * (v / 255) ** gamma
    return np.round(v).astype(np.uint8)


class Camera:
    """The frames the engine gets: the flight's render, photometric changes, then undistortion."""

    def __init__(self, flight: Flight, args):
        self.flight, self.args = flight, args
        self.info = None
        if args.undistort:
            c = flight.cfg
            self.info = SimpleNamespace(width=c.width, height=c.height, k=c.camera_matrix().ravel().tolist(),
                                        d=list(c.distortion), distortion_model='plumb_bob')
        self.undistorter = Undistorter()
        self.undistort_ms = []

    def __call__(self, pose) -> np.ndarray:
        a = self.args
        frame = self.flight.render(pose)
        if (a.exposure, tuple(a.wb), a.gamma) != (1.0, (1.0, 1.0), 1.0):
            frame = photometric(frame, a.exposure, a.wb, a.gamma)
        if self.info is not None:
            t0 = time.perf_counter()
            frame, _ = self.undistorter(frame, self.info)
            self.undistort_ms.append(1e3 * (time.perf_counter() - t0))
        if a.normalize:
            frame = normalize_photometric(frame)
        return frame


def condition_tag(args) -> str:
    """'' for unmodified frames (the caches of earlier runs), else the modifications."""
    parts = [f'k1{args.k1:g}' if args.k1 else '', f'k2{args.k2:g}' if args.k2 else '',
             'undist' if args.undistort else '', f'ex{args.exposure:g}' if args.exposure != 1 else '',
             f'wb{args.wb[0]:g}-{args.wb[1]:g}' if tuple(args.wb) != (1.0, 1.0) else '',
             f'gam{args.gamma:g}' if args.gamma != 1 else '', 'norm' if args.normalize else '']
    return ''.join(f'_{p}' for p in parts if p)


def season(rgb: np.ndarray) -> np.ndarray:
    """The orthophoto as another season or sensor might show it: gamma 1.3, warmer (red x1.1,
    blue x0.85), a Gaussian blur (sigma 1 px), and greens shifted towards brown."""
    v = photometric(rgb, 1.0, (1.1, 0.85), 1.3).astype(np.float32)
    r, g, b = v[..., 0], v[..., 1], v[..., 2]
    v = np.stack([0.8 * r + 0.2 * g, 0.85 * g + 0.1 * r, b], axis=-1)
    return cv2.GaussianBlur(np.clip(v, 0, 255).astype(np.uint8), (0, 0), 1.0)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def descriptors(engine, flight: Flight, n: int, rate: float, camera=None):
    camera = camera or flight.render
    out, bnd, truth = [], [], []
    for i in range(n):
        pose = flight.pose(i / rate)
        o = engine(camera(pose))
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
    ap.add_argument('--k1', type=float, default=0.0, help='radial lens distortion k1 of the frames (plumb_bob)')
    ap.add_argument('--k2', type=float, default=0.0, help='radial lens distortion k2 of the frames')
    ap.add_argument('--undistort', action='store_true', help='undistort the frames before the engine (as feature_node)')
    ap.add_argument('--exposure', type=float, default=1.0, help='exposure gain on the 8-bit values')
    ap.add_argument('--wb', type=float, nargs=2, default=[1.0, 1.0], metavar=('R', 'B'),
                    help='white-balance gains of red and blue')
    ap.add_argument('--gamma', type=float, default=1.0, help='gamma applied after the gains')
    ap.add_argument('--normalize', action='store_true', help='normalize frames and map tiles photometrically')
    ap.add_argument('--graphs', nargs='+', choices=('fp32', 'w4a8'), default=['fp32', 'w4a8'])
    ap.add_argument('--threads', type=int, default=2, help='engine threads')
    ap.add_argument('--sharded', type=float, default=None, metavar='SHARD_M',
                    help='localize in the map cut into shards of SHARD_M metres (a sharded map folder beside it: '
                    'global index, shards loaded under --map-memory-mb) instead of the one-file map')
    ap.add_argument('--index', default=None, help='with --sharded: the global index kind (default: exact for small '
                    'maps; e.g. ivf_pqfs, the compressed one of mission maps)')
    ap.add_argument('--map-memory-mb', type=float, default=512.0)
    ap.add_argument('--odometry-drift', type=float, default=None, metavar='FRAC',
                    help='feed the localizer a simulated odometry: the true track in a frame rotated 25 deg with a '
                    'random-walk error of FRAC per metre (onboard.flight.odometry_along); default: none')
    ap.add_argument('--height-input', action='store_true', help='feed the localizer the true height above ground '
                    '(times 1 + --height-noise x a standard normal), as a rangefinder would')
    ap.add_argument('--height-noise', type=float, default=0.03, help='relative error of --height-input')
    ap.add_argument('--no-verify', action='store_true', help='no verification: the frames are not given')
    ap.add_argument('--verify-set', nargs='*', default=[], help='VerifyConfig overrides name=value')
    ap.add_argument('--map-season', action='store_true', help='build the map from a seasonally changed orthophoto')
    args = ap.parse_args()
    image, gsd, height = FLIGHTS[args.flight]
    models = default_onboard_models()
    cfg = MapConfig(stride_m=args.stride, headings=args.headings, heights_m=tuple(args.heights), gsd_m=gsd,
                    photometric='grayworld' if args.normalize else 'none')
    tag = f'{image.stem}_g{gsd:g}_s{args.stride:g}_h{args.headings}_z{"-".join(f"{h:g}" for h in args.heights)}'
    map_path = args.out / f'{tag}{"_norm" if args.normalize else ""}{"_season" if args.map_season else ""}.safetensors'
    if not map_path.is_file():
        t0 = time.perf_counter()
        source = image
        if args.map_season:
            source = args.out / f'{image.stem}_season.png'
            cv2.imwrite(str(source), cv2.cvtColor(season(read_rgb(image)), cv2.COLOR_RGB2BGR))
        pm = build_map_file(source, map_path, models['reference_model'], default_vocab(), cfg,
                            progress=lambda i, n: print(f'{i}/{n} tiles', flush=True) if i % 1000 == 0 else None)
        print(f'map {map_path}: {pm.meta.n_tiles} tiles in {time.perf_counter() - t0:.0f} s, '
              f'PCA {pm.descriptors.shape[1]} dims explain {pm.meta.pca_explained:.3f}')
    pmap = PlaceMap.load(map_path)
    map_form = 'one file'
    if args.sharded is not None:
        from gplq_ros.onboard import mapindex
        from gplq_ros.onboard.mapstore import ShardedMap, default_index_config, shard_placemap, write_sharded
        res = shard_placemap(pmap, args.sharded)
        icfg = default_index_config(*res.descriptors.shape)
        if args.index:
            icfg = replace(mapindex.IndexConfig(), kind=args.index,
                           m=default_index_config(10 ** 9, res.descriptors.shape[1]).m)
        folder = map_path.with_name(f'{map_path.stem}_shard{args.sharded:g}_{icfg.kind}')
        if not (folder / 'map.json').is_file():
            write_sharded(res, folder, icfg, force=True)
        pmap = ShardedMap(folder, args.map_memory_mb)
        map_form = f'sharded {args.sharded:g} m, {icfg.kind} index, {len(pmap.keys)} shards'
    ortho = read_rgb(image)
    flight = Flight(ortho, FlightConfig(gsd_m=gsd, height_m=height, k1=args.k1, k2=args.k2))
    plain = Flight(ortho, FlightConfig(gsd_m=gsd, height_m=height))
    camera, ctag = Camera(flight, args), condition_tag(args)
    ref_args = SimpleNamespace(k1=0.0, k2=0.0, undistort=False, exposure=1.0, wb=[1.0, 1.0], gamma=1.0,
                               normalize=args.normalize)     # the unmodified frames (normalized with --normalize)
    ref_camera, ref_tag = Camera(plain, ref_args), condition_tag(ref_args)

    def typed(cls, k, v):
        return v.lower() == 'true' if isinstance(getattr(cls(), k), bool) else type(getattr(cls(), k))(v)

    def overrides(cls, pairs):
        return replace(cls(), **{k: typed(cls, k, v) for k, v in (s.split('=', 1) for s in pairs)})
    lcfg, vcfg = overrides(LocalizerConfig, args.set), overrides(VerifyConfig, args.verify_set)
    single_thread_blas()        # as localizer_node: one BLAS thread
    rows, agreement = {}, {}
    engines = {}

    def frames(graph: str, tag: str, fl: Flight, cam):
        """The graph's descriptors, boundary maps and true poses on the frames of condition ``tag``
        (cached in --out)."""
        cache = args.out / f'frames_{args.flight}_{Path(graph).stem}_{args.frames}_{args.rate:g}hz{tag}.npz'
        if cache.is_file():
            z = np.load(cache)
            return z['desc'], z['boundary'], [(t, xy, yaw) for t, xy, yaw in zip(z['t'], z['xy'], z['yaw'])]
        if graph not in engines:
            engines[graph] = load(Path(graph), default_vocab(), threads=args.threads)
        desc, bnd, truth = descriptors(engines[graph], fl, args.frames, args.rate, cam)
        np.savez(cache, desc=desc, boundary=bnd, t=[t for t, _, _ in truth], xy=[xy for _, xy, _ in truth],
                 yaw=[y for _, _, y in truth])
        return desc, bnd, truth

    graphs = {'fp32': ('FP32', models['reference_model']), 'w4a8': ('W4A8 (onboard)', models['model'])}
    for name, graph in (graphs[g] for g in args.graphs):
        cache = args.out / f'frames_{args.flight}_{Path(graph).stem}_{args.frames}_{args.rate:g}hz{ctag}.npz'
        if not cache.is_file() and not Path(graph).is_file():
            print(f'{name}: {graph} not found (make demo makes it): skipped', flush=True)
            continue
        desc, bnd, truth = frames(graph, ctag, flight, camera)
        if ctag != ref_tag:    # the same graph on the unmodified frames
            d0, b0, _ = frames(graph, ref_tag, plain, ref_camera)
            cos = np.sum(desc * d0, axis=1)
            nccs = np.array([ncc(x, y) for x, y in zip(bnd, b0)])
            agreement[name] = {'descriptor_cosine_mean': float(cos.mean()), 'descriptor_cosine_min': float(cos.min()),
                               'boundary_ncc_mean': float(nccs.mean()), 'boundary_ncc_min': float(nccs.min())}
        loc = Localizer(pmap, lcfg, vcfg)
        t0 = time.perf_counter()
        if not args.no_verify and loc.warm():       # as localizer_node's configure: before the first frame
            loc.verifier.settle()
            print(f'{name}: map keypoints of the orthophoto layer detected in {time.perf_counter() - t0:.1f} s '
                  '(background, at start)', flush=True)
        fixes, q_ms, bg_ms = [], [], []
        odom = odometry_along(np.array([xy for _, xy, _ in truth]), np.array([a for _, _, a in truth]),
                              args.odometry_drift) if args.odometry_drift is not None else [None] * len(truth)
        rng = np.random.default_rng(1)
        heights = [flight.pose(float(t)).z_m * (1 + args.height_noise * rng.normal()) if args.height_input else None
                   for t, _, _ in truth]
        verified = []
        for d, b, (t, _, _), o, h in zip(desc, bnd, truth, odom, heights):
            img = None if args.no_verify else camera(flight.pose(float(t)))
            t0 = time.perf_counter()
            est = loc.update(d, float(t), b, odom=o, height_m=h, image=img)
            q_ms.append((time.perf_counter() - t0) * 1e3)
            if loc.verifier is not None:      # the map keypoints detected in the background: done before the
                before = loc.verifier.stats['prefetch_ms']      # next frame at these rates (reported apart)
                loc.verifier.settle()
                bg_ms.append(loc.verifier.stats['prefetch_ms'] - before)
            if est.fix:
                fixes.append((float(t), est.xy, est.cov, est.measurement.yaw))
            g = est.independent
            if g is not None and g.inliers and not g.weak and not g.shared:    # verified on its own
                p = flight.pose(float(t))
                verified.append(float(np.hypot(g.xy[0] - p.x_m, g.xy[1] - p.y_m)))
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
        if bg_ms:
            s['background_ms_p50'], s['background_ms_max'] = float(np.median(bg_ms)), float(max(bg_ms))
        s['verified_share'] = len(verified) / len(desc)
        s['verified_within_5m'] = float(np.mean(np.array(verified) <= 5)) if verified else float('nan')
        s['verified_p50_m'] = float(np.median(verified)) if verified else float('nan')
        rows[name] = s
    frames_info = {'k1': args.k1, 'k2': args.k2, 'undistort': args.undistort, 'exposure': args.exposure,
                   'wb': list(args.wb), 'gamma': args.gamma, 'normalize': args.normalize}
    if camera.undistort_ms:
        frames_info['undistort_ms_p50'] = float(np.median(camera.undistort_ms))
    if hasattr(pmap, 'stats'):
        frames_info['map_stats'] = dict(pmap.stats, resident_mb=pmap.resident_bytes() / 2 ** 20)
    print(json.dumps({'flight': args.flight, 'map': pmap.meta.n_tiles, 'map_form': map_form, 'frames': frames_info,
                      'localizer': asdict(lcfg), 'verify': asdict(vcfg), 'rows': rows, 'agreement': agreement},
                     indent=1))
    parts = (f'odometry {args.odometry_drift:g}/m' if args.odometry_drift is not None else '',
             'height' if args.height_input else '')
    inputs = ' + '.join(x for x in parts if x) or 'frames only'
    print(f'\n{args.flight}, {args.frames} frames at {args.rate:g} Hz, {inputs}, map {map_form}, near_search '
          f'{lcfg.near_search}:')
    for name, r in rows.items():
        print(table_row(f'{args.flight} {args.rate:g} Hz', name, r))


def table_row(flight: str, graph: str, r: dict) -> str:
    """One markdown row of the report (README / docs/benchmarks.md): fix rate after the first fix,
    fixes within 5 / 10 / 20 m, error p50 / p95, inside 2 sigma, confident wrong, first fix, localizer
    ms p50 / p95 (with the map keypoints' background detection p50 / max per frame)."""
    def pc(k):
        v = r.get(k)
        return '-' if v is None or v != v else f'{100 * v:.0f} %'
    err = f'{r["error_p50_m"]:.1f} / {r["error_p95_m"]:.1f}' if r['fixes'] else '-'
    first = '-' if r['time_to_first_fix_s'] is None else f'{r["time_to_first_fix_s"]:.1f} s'
    return (f'| {flight} | {graph} | {pc("fix_rate")} | {pc("within_5m")} / {pc("within_10m")} / {pc("within_20m")} | '
            f'{err} | {pc("inside_2sigma")} | {r["confident_wrong"]} of {r["fixes"]} | {first} | '
            f'{r["localizer_ms_p50"]:.1f} / {r["localizer_ms_p95"]:.1f}' +
            (f' (background {r["background_ms_p50"]:.0f} / max {r["background_ms_max"]:.0f})'
             if 'background_ms_p50' in r else '') + ' |')


if __name__ == '__main__':
    main()
