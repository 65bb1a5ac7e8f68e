"""GNSS-free localization on real geotagged photos: today's localizer, measured against the photos' GPS.

Steps (#19, a first real-data figure):

1. Geo-reference the orthophoto from the photos (``onboard.georef_fit.fit_georeference``,
   north-up model; GSD and RMS printed, world file and report written to --out).
2. Build the place map of the orthophoto with gplq_map's library call (``mapbuild.build_map_file``),
   camera = the photos' published image (640 wide, the photos' aspect: 640x360 for 16:9) with
   the HFOV of the EXIF intrinsics and heights from the photos' RelativeAltitude range
   (``photos.map_camera``, as ``gplq_map --photos``: one height when the range is within a factor
   1.1, the refinement's height step; else heights 1.1x apart), stride and headings gplq_map's defaults;
   FP32 graph exported at the photos' aspect (``preprocess.resolve_size``: 126x224 for 16:9;
   exported into --out if missing), the VLAD vocabulary of $GPLQ_HOME (built with the offline
   api if missing). The map is cached in --out.
3. Each photo, resized to 640 wide (``photos.load_image``), in capture order with its capture
   time as t, through the engine and ``Localizer.update(descriptor, t, boundary)`` (the
   patch-grid boundary map: what localizer_node gets from feature_node's default
   map_resolution=grid), default ``LocalizerConfig``.
4. Every frame scored against the photo's GPS in the map frame (``photos.map_xy``): fix rate,
   fixes within 5/10/20 m, error p50/p95, share of fixes inside their 2-sigma ellipse,
   confident wrong fixes (error > 20 m with 2-sigma < 10 m), the single-frame measurement
   (``Localizer.measure`` without the filter) within 10 m and its p50, retrieval top-1, time
   per frame. A second reference, the photo's centre as SIFT registered it in the orthophoto
   (independent of the GPS noise), is reported beside it.

    PYTHONPATH=. .venv/bin/python benchmarks/localize_photos.py \\
        --photos /work/shared/datasets/brighton_beach/images \\
        --ortho /work/shared/datasets/brighton_beach/brighton_beach.jpg --out out/localize_photos

``--graphs fp32 w4a8 PATH``: graphs to run; ``fp32`` = the exported FP32 graph, any other label
takes the path after it (``w4a8`` alone: $GPLQ_HOME/onboard/w4a8_<h>x<w>.onnx at the photos'
input size, skipped when absent). Graphs whose input aspect is not the photos' are skipped (the
engine would stretch the image). Descriptors are cached in --out per graph (file checksum).

A development measurement: no localizer setting is tuned here (the defaults are measured).
Photos are seconds apart (brighton_beach: 7-9 s), so the filter's motion model sees large gaps.
"""
import argparse
import csv
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from gplq_ros.onboard.engine import load
from gplq_ros.onboard.fileformat import sha256_file
from gplq_ros.onboard.flight import odometry_along
from gplq_ros.onboard.geotiff import read_geotiff
from gplq_ros.onboard.georef_fit import GeorefConfig, fit_georeference, load_photos, write_world_file
from gplq_ros.onboard.localize import Localizer, LocalizerConfig, inside_ellipse, largest_sigma, summarize
from gplq_ros.onboard.mapbuild import build_map_file
from gplq_ros.onboard.paths import default_vocab, gplq_home
from gplq_ros.onboard.photos import list_photos, load_image, map_camera, map_xy, read_photo
from gplq_ros.onboard.placemap import MapConfig, PlaceMap
from gplq_ros.onboard.pipeline import single_thread_blas
from gplq_ros.onboard.preprocess import resolve_size
from gplq_ros.onboard.verify import VerifyConfig

DEFAULTS = MapConfig()
WIDTH = 640          # photo_camera_node's default published width


def wrap_deg(a: float) -> float:
    return (a + 180.0) % 360.0 - 180.0


def parse_graphs(tokens, fp32: Path, input_hw):
    """[(label, path)] of --graphs (see the module text)."""
    out, i = [], 0
    while i < len(tokens):
        label = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if nxt is not None and (nxt.endswith('.onnx') or Path(nxt).is_file()):
            out.append((label, Path(nxt)))
            i += 2
            continue
        if label == 'fp32':
            out.append(('fp32', fp32))
        elif label == 'w4a8':
            out.append(('w4a8', gplq_home() / 'onboard' / f'w4a8_{input_hw[0]}x{input_hw[1]}.onnx'))
        else:
            raise SystemExit(f'--graphs: {label!r} needs a path after it')
        i += 1
    return out


def ensure_assets(fp32: Path, vocab: Path, input_hw) -> None:
    """The vocabulary (gplq_vocab's call) and the FP32 graph at ``input_hw`` when missing (torch only then)."""
    if vocab.is_file() and fp32.is_file():
        return
    from gplq_ros.offline import api                   # torch: only to make what is missing
    if not vocab.is_file():
        t0 = time.perf_counter()
        api.vocabulary_to_file(vocab)
        print(f'vocabulary {vocab} built in {time.perf_counter() - t0:.0f} s', flush=True)
    if not fp32.is_file():
        t0 = time.perf_counter()
        fp32.parent.mkdir(parents=True, exist_ok=True)
        api.export_fp32(api.load_extractor(), fp32, tuple(input_hw))
        print(f'FP32 graph {fp32} ({input_hw[0]}x{input_hw[1]}) exported in {time.perf_counter() - t0:.0f} s',
              flush=True)


def pct(x, q):
    return float(np.percentile(x, q)) if len(x) else float('nan')


def run_graph(label, graph: Path, vocab: Path, metas, size, pmap: PlaceMap, out: Path, threads: int, odom=None,
              vcfg: VerifyConfig = VerifyConfig(), heights=None):
    """Per-frame records of one graph over the photos (descriptors cached)."""
    cache = out / f'frames_{graph.stem}_{sha256_file(graph)[:12]}_{len(metas)}_{size[0]}x{size[1]}.npz'
    if cache.is_file():
        z = np.load(cache)
        desc, bnd, eng_ms, backend = z['desc'], z['boundary'], z['engine_ms'], str(z['backend'])
        print(f'{label}: descriptors from {cache}', flush=True)
    else:
        engine = load(graph, vocab, threads=threads)
        gh, gw = engine.input_hw
        if abs(gw / gh - size[0] / size[1]) > 0.02 * size[0] / size[1]:
            print(f'{label}: {graph} takes {gh}x{gw}, not the photos\' aspect {size[0]}x{size[1]}: skipped')
            return None, engine.description
        desc, bnd, eng_ms = [], [], []
        for m in metas:
            img = load_image(m, size[0])
            t0 = time.perf_counter()
            o = engine(img)
            eng_ms.append((time.perf_counter() - t0) * 1e3)
            desc.append(o.descriptor)
            bnd.append(o.boundary)
        desc, bnd, eng_ms, backend = np.stack(desc), np.stack(bnd), np.array(eng_ms), engine.description
        np.savez(cache, desc=desc, boundary=bnd, engine_ms=eng_ms, backend=backend)
    single_thread_blas()                               # as localizer_node: one BLAS thread
    loc, single = Localizer(pmap, LocalizerConfig(), vcfg), Localizer(pmap, LocalizerConfig(), vcfg)
    t0 = time.perf_counter()
    if loc.warm():          # as localizer_node's configure: the map keypoints before the first photo
        loc.verifier.settle()
        print(f'{label}: map keypoints of the orthophoto layer detected in {time.perf_counter() - t0:.1f} s '
              '(background, at start)', flush=True)
    rows = []
    for i, (m, d, b, ems) in enumerate(zip(metas, desc, bnd, eng_ms)):
        img = load_image(m, size[0]) if loc.verifier is not None else None    # the frame, as verify_image
        t0 = time.perf_counter()
        est = loc.update(d, float(m.time_s), b, odom=odom[i] if odom else None, image=img,
                         height_m=heights[i] if heights else None)
        loc_ms = (time.perf_counter() - t0) * 1e3
        bg_ms = 0.0
        if loc.verifier is not None:      # the map keypoints detected in the background, done before the next
            before = loc.verifier.stats['prefetch_ms']          # photo (they are seconds apart)
            loc.verifier.settle()
            bg_ms = loc.verifier.stats['prefetch_ms'] - before
        t0 = time.perf_counter()
        meas = single.measure(d, b, frame=single.frame_features(img))
        meas_ms = (time.perf_counter() - t0) * 1e3
        rows.append({'est': est, 'meas': meas, 'engine_ms': float(ems), 'localizer_ms': loc_ms,
                     'measure_ms': meas_ms, 'background_ms': bg_ms})
    return rows, backend


def score(rows, truth, reg_truth, pmap: PlaceMap, metas):
    """Figures of one graph (module text, step 4) and the per-frame table."""
    frames = []
    fixes_sum, truth_sum = [], []
    for m, r, (xy, yaw), reg in zip(metas, rows, truth, reg_truth):
        est, meas = r['est'], r['meas']
        t = float(m.time_s)
        truth_sum.append((t, xy, reg[1] if reg is not None else yaw))     # yaw: the registered heading
        tile_xy = pmap.poses[meas.tile, :2]
        tm = est.measurement
        f = {'photo': m.path.name, 't_s': t - float(metas[0].time_s), 'truth_xy': xy.tolist(),
             'retrieval_top1_err_m': float(np.hypot(*(tile_xy - xy))),
             'retrieval_err_m': float(np.hypot(*(meas.retrieval_xy - xy))),
             'measurement_err_m': float(np.hypot(*(meas.xy - xy))),
             'measurement_inside_2sigma': inside_ellipse(meas.xy - xy, meas.cov),
             'nearest_tile_m': float(np.min(np.hypot(*(pmap.poses[:, :2] - xy).T))),
             'tracked_measurement_err_m': float(np.hypot(*(tm.xy - xy))) if tm is not None else float('nan'),
             'measurement_refined': bool(np.isfinite(meas.height_m)),
             'verified': bool(meas.inliers and not meas.weak), 'inliers': int(meas.inliers),
             'verify_reason': meas.weak,
             'ncc': float(meas.ncc), 'score': meas.score, 'margin': meas.margin,
             'measurement_height_m': float(meas.height_m),
             'fix': bool(est.fix), 'reason': est.reason,
             'engine_ms': r['engine_ms'], 'localizer_ms': r['localizer_ms'], 'measure_ms': r['measure_ms'],
             'background_ms': r['background_ms']}
        if reg is not None:
            f['measurement_err_vs_registration_m'] = float(np.hypot(*(meas.xy - reg[0])))
            if np.isfinite(meas.height_m):
                f['measurement_yaw_err_vs_registration_deg'] = wrap_deg(math.degrees(meas.yaw - reg[1]))
        f['measurement_yaw_err_vs_exif_deg'] = wrap_deg(math.degrees(meas.yaw - yaw))
        if est.fix:
            e = est.xy - xy
            two_sigma = 2 * largest_sigma(est.cov)
            f.update(fix_xy=est.xy.tolist(), fix_err_m=float(np.hypot(*e)), fix_2sigma_m=two_sigma,
                     fix_inside_2sigma=inside_ellipse(e, est.cov))
            if reg is not None:
                f['fix_err_vs_registration_m'] = float(np.hypot(*(est.xy - reg[0])))
            fixes_sum.append((t, est.xy, est.cov, est.measurement.yaw))
        frames.append(f)
    n = len(frames)
    fx = [f for f in frames if f['fix']]
    err = np.array([f['fix_err_m'] for f in fx])
    merr = np.array([f['measurement_err_m'] for f in frames])
    top1 = np.array([f['retrieval_top1_err_m'] for f in frames])
    rerr = np.array([f['retrieval_err_m'] for f in frames])
    s = summarize(n, fixes_sum, truth_sum, float(metas[0].time_s))
    s.update({
        'fix_rate_all_frames': len(fx) / n,
        'fixes_within_5m': int(np.sum(err <= 5)), 'fixes_within_10m': int(np.sum(err <= 10)),
        'fixes_within_20m': int(np.sum(err <= 20)),
        'confident_wrong': int(sum(1 for f in fx if f['fix_err_m'] > 20 and f['fix_2sigma_m'] < 10)),
        'fix_2sigma_p50_m': pct([f['fix_2sigma_m'] for f in fx], 50),
        'measurement_within_10m': float(np.mean(merr <= 10)), 'measurement_within_5m': float(np.mean(merr <= 5)),
        'measurement_p50_m': float(np.median(merr)),
        'frames_within_10m_of_a_tile': int(sum(1 for f in frames if f['nearest_tile_m'] <= 10)),
        'measurement_refined_share': float(np.mean([f['measurement_refined'] for f in frames])),
        'verified_share': float(np.mean([f['verified'] for f in frames])),
        'verified_within_10m': float(np.mean([f['measurement_err_m'] <= 10 for f in frames if f['verified']]))
        if any(f['verified'] for f in frames) else float('nan'),
        'verified_p50_m': pct([f['measurement_err_m'] for f in frames if f['verified']], 50),
        'verified_inside_2sigma': float(np.mean([f['measurement_inside_2sigma'] for f in frames if f['verified']]))
        if any(f['verified'] for f in frames) else float('nan'),
        'retrieval_top1_within_10m': float(np.mean(top1 <= 10)),
        'retrieval_within_10m': float(np.mean(rerr <= 10)), 'retrieval_p50_m': float(np.median(rerr)),
        'reasons': {k: sum(1 for f in frames if f['reason'] == k) for k in sorted({f['reason'] for f in frames})},
        'engine_ms_p50': pct([f['engine_ms'] for f in frames], 50),
        'localizer_ms_p50': pct([f['localizer_ms'] for f in frames], 50),
        'localizer_ms_p95': pct([f['localizer_ms'] for f in frames], 95),
        'localizer_ms_max': float(max(f['localizer_ms'] for f in frames)),
        'background_ms_p50': pct([f['background_ms'] for f in frames], 50),
        'background_ms_max': float(max(f['background_ms'] for f in frames)),
        'frame_ms_p50': pct([f['engine_ms'] + f['localizer_ms'] for f in frames], 50),
    })
    reg_m = [f['measurement_err_vs_registration_m'] for f in frames if 'measurement_err_vs_registration_m' in f]
    reg_f = [f['fix_err_vs_registration_m'] for f in fx if 'fix_err_vs_registration_m' in f]
    s['vs_registration'] = {'frames': len(reg_m), 'measurement_p50_m': pct(reg_m, 50),
                            'measurement_within_10m': float(np.mean(np.array(reg_m) <= 10)) if reg_m else None,
                            'fixes': len(reg_f), 'fix_error_p50_m': pct(reg_f, 50)}
    # retrieval right (within 10 m) but the frame's outcome wrong: the refinement or the filter lost it
    s['retrieval_right_outcome_wrong'] = [
        f['photo'] for f in frames if f['retrieval_err_m'] <= 10
        and (f['measurement_err_m'] > 10 or (f['fix'] and f['fix_err_m'] > 10))]
    return s, frames


ROWS = [('frames', 'frames', '{:d}'), ('fixes', 'fixes', '{:d}'),
        ('fix rate (all frames)', 'fix_rate_all_frames', '{:.0%}'),
        ('fix rate (after the first fix)', 'fix_rate', '{:.0%}'),
        ('fixes within 5 / 10 / 20 m', None, None),
        ('fix error p50 / p95, m', None, None),
        ('fixes inside their 2-sigma ellipse', 'inside_2sigma', '{:.0%}'),
        ('fix 2-sigma p50, m', 'fix_2sigma_p50_m', '{:.1f}'),
        ('confident wrong (> 20 m, 2-sigma < 10 m)', 'confident_wrong', '{:d}'),
        ('time to first fix, s', 'time_to_first_fix_s', '{:.0f}'),
        ('single-frame measurement within 10 m', 'measurement_within_10m', '{:.0%}'),
        ('single-frame measurement p50, m', 'measurement_p50_m', '{:.1f}'),
        ('  refined or verified', 'measurement_refined_share', '{:.0%}'),
        ('  verified (keypoints + RANSAC + PnP)', 'verified_share', '{:.0%}'),
        ('  verified within 10 m', 'verified_within_10m', '{:.0%}'),
        ('  verified error p50, m', 'verified_p50_m', '{:.1f}'),
        ('  verified inside their 2-sigma', 'verified_inside_2sigma', '{:.0%}'),
        ('retrieval (top-k cluster) within 10 m', 'retrieval_within_10m', '{:.0%}'),
        ('retrieval top-1 tile within 10 m', 'retrieval_top1_within_10m', '{:.0%}'),
        ('frames whose GPS is within 10 m of a tile centre', 'frames_within_10m_of_a_tile', '{:d}'),
        ('measurement p50 vs SIFT registration, m', None, None),
        ('engine ms / frame p50', 'engine_ms_p50', '{:.0f}'),
        ('localizer ms / frame p50 / p95 (max); background map keypoints ms p50 (max)', None, None)]


def cell(s, key, fmt):
    v = s.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '-'
    return fmt.format(v)


def markdown(summaries: dict) -> str:
    names = list(summaries)
    lines = ['| | ' + ' | '.join(names) + ' |', '|---|' + '---:|' * len(names)]
    for title, key, fmt in ROWS:
        vals = []
        for n in names:
            s = summaries[n]
            if key is not None:
                vals.append(cell(s, key, fmt))
            elif title.startswith('fixes within'):
                vals.append(f'{s["fixes_within_5m"]} / {s["fixes_within_10m"]} / {s["fixes_within_20m"]}')
            elif title.startswith('fix error'):
                vals.append(f'{cell(s, "error_p50_m", "{:.1f}")} / {cell(s, "error_p95_m", "{:.1f}")}'
                            if s['fixes'] else '-')
            elif title.startswith('measurement p50 vs'):
                vals.append(cell(s['vs_registration'], 'measurement_p50_m', '{:.1f}'))
            else:
                vals.append(f'{s["localizer_ms_p50"]:.0f} / {s["localizer_ms_p95"]:.0f} ({s["localizer_ms_max"]:.0f}); '
                            f'background {s["background_ms_p50"]:.0f} ({s["background_ms_max"]:.0f})')
        lines.append(f'| {title} | ' + ' | '.join(vals) + ' |')
    return '\n'.join(lines)


def frame_table(frames) -> str:
    head = (f'{"photo":<13} {"t s":>5} {"tile m":>6} {"top1 m":>7} {"retr m":>7} {"meas m":>7} {"trk m":>6} '
            f'{"ncc":>5} {"margin":>6} '
            f'{"h m":>5} {"yaw-reg":>7} {"fix":>5} {"err m":>6} {"2sig m":>6} {"in":>3} reason')
    out = [head]
    for f in frames:
        yaw = f.get('measurement_yaw_err_vs_registration_deg')
        out.append(f'{f["photo"]:<13} {f["t_s"]:5.0f} {f["nearest_tile_m"]:6.1f} {f["retrieval_top1_err_m"]:7.1f} '
                   f'{f["retrieval_err_m"]:7.1f} {f["measurement_err_m"]:7.1f} {f["tracked_measurement_err_m"]:6.1f} '
                   f'{f["ncc"]:5.2f} {f["margin"]:6.3f} '
                   f'{f["measurement_height_m"]:5.1f} {"-" if yaw is None else f"{yaw:+.0f}":>7} '
                   f'{"yes" if f["fix"] else "no":>5} {f.get("fix_err_m", float("nan")):6.1f} '
                   f'{f.get("fix_2sigma_m", float("nan")):6.1f} '
                   f'{("y" if f["fix_inside_2sigma"] else "n") if f["fix"] else "-":>3} {f["reason"]}')
    return '\n'.join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--photos', type=Path, required=True, help='folder of the geotagged JPEG photos')
    ap.add_argument('--ortho', type=Path, required=True, help='orthophoto of the survey (north up, not geo-referenced)')
    ap.add_argument('--heights', type=float, nargs='+', default=None,
                    help='map heights, m (default: from the photos\' RelativeAltitude range)')
    ap.add_argument('--stride', type=float, default=DEFAULTS.stride_m)
    ap.add_argument('--headings', type=int, default=DEFAULTS.headings)
    ap.add_argument('--graphs', nargs='+', default=['fp32'], help='fp32 [w4a8 [PATH]] [LABEL PATH]')
    ap.add_argument('--fp32', type=Path, default=None, help='FP32 graph (default: --out/fp32_<h>x<w>.onnx, '
                    'exported when missing)')
    ap.add_argument('--vocabulary', type=Path, default=None, help=f'default {default_vocab()} (built when missing)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--odometry-drift', type=float, default=None, metavar='FRAC',
                    help='feed the localizer a simulated odometry: the photos\' GPS track in a frame rotated 25 deg, '
                    'with a random-walk error of FRAC per metre travelled (onboard.flight.odometry_along); default: '
                    'no odometry')
    ap.add_argument('--height-input', type=float, nargs='?', const=0.03, default=None, metavar='NOISE',
                    help='feed the localizer a height above ground: the reference height (--reference) or else the '
                    'photo\'s RelativeAltitude (above take-off; flat ground), times 1 + NOISE x N(0, 1) (default '
                    '0.03: a rangefinder or barometer of 3 %%); default: no height input')
    ap.add_argument('--out', type=Path, default=Path('out/localize_photos'))
    ap.add_argument('--reference', type=Path, default=None,
                    help='reference poses (poses.csv of benchmarks/seneca_reference.py): then --ortho is a '
                    'geo-referenced GeoTIFF (no fit) and the truth is the reference camera centre, not the GPS')
    ap.add_argument('--names', nargs=2, default=None, metavar=('FIRST', 'LAST'),
                    help='only the photos whose file names lie in FIRST..LAST (e.g. one pass of a survey)')
    ap.add_argument('--sensor-width-mm', type=float, default=0.0, help='for photos whose EXIF has no 35 mm focal')
    ap.add_argument('--verify-set', nargs='*', default=[], help='VerifyConfig overrides name=value (verify=false: '
                    'the boundary-map refinement)')
    args = ap.parse_args()
    vcfg = replace(VerifyConfig(), **{k: (v.lower() == 'true') if isinstance(getattr(VerifyConfig(), k), bool)
                                      else type(getattr(VerifyConfig(), k))(v)
                                      for k, v in (x.split('=', 1) for x in args.verify_set)})
    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    metas = sorted((read_photo(p) for p in list_photos(args.photos)), key=lambda m: (m.time_s, m.path.name))
    if args.names:
        metas = [m for m in metas if args.names[0] <= m.path.name <= args.names[1]]
    reference = None
    if args.reference:
        with open(args.reference) as fh:
            reference = {r['name']: r for r in csv.DictReader(fh) if r['registered'] == 'True'}
        metas = [m for m in metas if m.path.name in reference]
    m0 = metas[0]

    # 1. geo-reference
    t0 = time.perf_counter()
    res = fit = None
    if reference is not None:
        gt = read_geotiff(args.ortho)
        georef, gsd = gt.georef, gt.gsd_m
        print(f'georeference: {gt.describe()}', flush=True)
    else:
        res = fit_georeference(args.ortho, load_photos(args.photos), GeorefConfig())
        fit, georef = res.north_up, res.georef()
        gsd = fit.gsd_m
        print(res.report())
        print(f'georeference: north-up GSD {gsd:.5f} m/px, RMS {fit.rms_m:.2f} m over {sum(fit.inliers)} of '
              f'{len(res.names)} registered photos ({len(metas)} photos), UTM {res.zone_text}, origin '
              f'{georef.origin_e:.1f} E {georef.origin_n:.1f} N ({time.perf_counter() - t0:.0f} s)', flush=True)
        write_world_file(args.out / (args.ortho.stem + '.jgw'), fit, force=True)
        (args.out / 'georef.json').write_text(json.dumps(res.to_dict(), indent=1))

    # 2. camera, graph, vocabulary, map
    cam = map_camera(metas, WIDTH, args.sensor_width_mm)   # the photos' camera and heights, as gplq_map --photos
    size = (cam.width, cam.height)
    hfov = cam.hfov_deg
    input_hw = resolve_size(size[1], size[0], 224)
    alts = [m.relative_alt_m for m in metas if m.relative_alt_m is not None]
    heights = args.heights or list(cam.heights_m or DEFAULTS.heights_m)
    fp32 = args.fp32 or args.out / f'fp32_{input_hw[0]}x{input_hw[1]}.onnx'
    vocab = args.vocabulary or default_vocab()
    ensure_assets(fp32, vocab, input_hw)
    cfg = MapConfig(stride_m=args.stride, headings=args.headings, heights_m=tuple(heights), width=size[0],
                    height=size[1], hfov_deg=round(hfov, 3), gsd_m=round(gsd, 6))
    rng = f'{min(alts):.1f}..{max(alts):.1f} m' if alts else 'none'
    print(f'camera {size[0]}x{size[1]} px, HFOV {hfov:.2f} deg (EXIF {m0.focal_35mm} mm 35mm-equivalent), graph '
          f'input {input_hw[0]}x{input_hw[1]}, map heights {heights} m (RelativeAltitude {rng}), stride '
          f'{args.stride} m, {args.headings} headings', flush=True)
    tag = (f'{args.ortho.stem}_g{cfg.gsd_m:.4f}_c{size[0]}x{size[1]}_f{cfg.hfov_deg:.1f}_s{args.stride:g}'
           f'_h{args.headings}_z{"-".join(f"{h:g}" for h in heights)}_{sha256_file(fp32)[:8]}')
    map_path = args.out / f'{tag}.safetensors'
    map_s = None                                       # cached
    if not map_path.is_file():
        t0 = time.perf_counter()
        last = [t0]

        def progress(i, n):
            if time.perf_counter() - last[0] > 30 or i == n:
                last[0] = time.perf_counter()
                print(f'  map: {i}/{n} tiles', flush=True)
        pm = build_map_file(args.ortho, map_path, fp32, vocab, cfg, georef, threads=args.threads, progress=progress)
        map_s = time.perf_counter() - t0
        print(f'map {map_path}: {pm.meta.n_tiles} tiles in {map_s:.0f} s, PCA {pm.descriptors.shape[1]} dims explain '
              f'{pm.meta.pca_explained:.3f}', flush=True)
    pmap = PlaceMap.load(map_path)

    # truth: GPS in the map frame; SIFT registration (centre, heading) where the photo registered; with
    # --reference: the reference camera centre and yaw
    if reference is not None:
        truth = [(np.array([float(reference[m.path.name]['e']) - georef.origin_e,
                            float(reference[m.path.name]['n']) - georef.origin_n]),
                  math.radians(float(reference[m.path.name]['yaw_deg']))) for m in metas]
        reg_truth = [None] * len(metas)
    else:
        truth = [(np.array(map_xy(georef, m.lat, m.lon)), m.yaw('gimbal')) for m in metas]
        regs = {r.name: r for r in res.registrations}
        reg_truth = []
        for m in metas:
            r = regs.get(m.path.name)
            reg_truth.append((np.array([gsd * (r.centre_px[0] + 0.5), -gsd * (r.centre_px[1] + 0.5)]),
                              -math.radians(r.heading_deg)) if r is not None and r.ok else None)
    lo, hi = pmap.poses[:, :2].min(axis=0) - args.stride / 2, pmap.poses[:, :2].max(axis=0) + args.stride / 2
    outside = [m.path.name for m, (xy, _) in zip(metas, truth) if not ((xy >= lo) & (xy <= hi)).all()]
    print(f'map tile centres x {lo[0]:.0f}..{hi[0]:.0f} m, y {lo[1]:.0f}..{hi[1]:.0f} m; photos outside it: '
          f'{len(outside)} {outside}', flush=True)

    # the optional inputs, the same for every graph
    odom = None
    if args.odometry_drift is not None:      # simulated VIO: the GPS track (map frame) rotated, with drift
        odom = odometry_along(np.array([xy for xy, _ in truth]), np.array([a for _, a in truth]), args.odometry_drift)
    heights_in = None
    if args.height_input is not None:        # a rangefinder / barometer: the reference or EXIF height, with noise
        base = [float(reference[m.path.name]['height_agl_m']) if reference is not None else m.relative_alt_m
                for m in metas]
        if any(h is None or not h > 0 for h in base):
            raise SystemExit('--height-input: a photo without a height (no RelativeAltitude in its EXIF)')
        hrng = np.random.default_rng(1)
        heights_in = [h * (1 + args.height_input * hrng.normal()) for h in base]

    # 3 + 4. every graph
    summaries, per_frame, backends = {}, {}, {}
    for label, graph in parse_graphs(args.graphs, fp32, input_hw):
        if not graph.is_file():
            print(f'{label}: {graph} not found: skipped', flush=True)
            continue
        rows, backends[label] = run_graph(label, graph, vocab, metas, size, pmap, args.out, args.threads, odom, vcfg,
                                          heights_in)
        if rows is None:
            continue
        summaries[label], per_frame[label] = score(rows, truth, reg_truth, pmap, metas)
        print(f'\n{label} ({graph.name}, {backends[label]}): per frame, errors vs GPS (tile: GPS to the nearest tile '
              'centre; top1/retr: retrieval; meas: single-frame measurement; trk: the filtered run\'s measurement, '
              'searched around the track; h: refined height; yaw-reg: single-frame yaw minus the SIFT-registered '
              'heading; err/2sig/in: the fix)')
        print(frame_table(per_frame[label]))
    wall = time.perf_counter() - t_start
    parts = (f'odometry {args.odometry_drift:g}/m' if args.odometry_drift is not None else '',
             f'height ({args.height_input:g} noise)' if args.height_input is not None else '')
    inputs = ' + '.join(x for x in parts if x) or 'frames only'
    print(f'\n{args.photos} ({len(metas)} photos; a development set), {inputs}, default LocalizerConfig, '
          f'run {wall:.0f} s\n')
    print(markdown(summaries))
    for label, s in summaries.items():
        print(f'{label}: reasons {s["reasons"]}; retrieval right, outcome wrong: {s["retrieval_right_outcome_wrong"]}')
    summary = {'photos': str(args.photos), 'ortho': str(args.ortho), 'development_set': True,
               'georef': {'gsd_m': gsd, 'rms_m': fit.rms_m, 'registered': len(res.names), 'fitted': sum(fit.inliers),
                          'utm_zone': res.zone_text, 'origin_e': georef.origin_e, 'origin_n': georef.origin_n}
               if fit is not None else {'gsd_m': gsd, 'from': str(args.ortho), 'reference': str(args.reference)},
               'map': {'path': str(map_path), 'tiles': pmap.meta.n_tiles, 'config': asdict(cfg),
                       'build_s': map_s, 'photos_outside_tile_area': outside},
               'graph_input_hw': list(input_hw), 'localizer': asdict(LocalizerConfig()), 'verify': asdict(vcfg),
               'backends': backends, 'odometry_drift': args.odometry_drift, 'height_input': args.height_input,
               'rows': summaries, 'frames': per_frame, 'wall_s': wall}
    (args.out / 'summary.json').write_text(json.dumps(summary, indent=1, default=float))
    print(f'\nwrote {args.out / "summary.json"}')


if __name__ == '__main__':
    main()
