"""Lens distortion and exposure on real photos: do a photo's outputs agree with the map's view of the place (#19).

The localizer's measurement compares a frame's boundary map (and descriptor) with those of the
orthophoto rendered as a pinhole camera would see it. Here each photo is registered to the
orthophoto it was made of (SIFT, ratio test, RANSAC homography from the photo's undistorted
pixels to orthophoto pixels), the orthophoto is rendered into the photo's frame with that
homography (the map's pinhole view of the same footprint, planar ground assumed), and the FP32
graph's outputs on the photo and on the render are compared: boundary-map NCC (the patch grid, as
the localizer gets it) and descriptor cosine, per photo, then mean / min over the registered photos.

1. **Lens**: k1 (plumb_bob, k2 = 0) is estimated from the registrations: the k1 whose undistorted
   keypoints give the most RANSAC homography inliers (2 px in the orthophoto) summed over the photos,
   on a grid of k1 values (``--k1-grid``), matched at ``--fit-width``. The map's view is rendered with
   the homography of that k1. Photos whose footprint lies at least ``--min-coverage`` on the
   orthophoto's valid (not white or black) pixels are compared; the boundary NCC is taken over the
   grid cells wholly on them (the render shows no-data or the repeated border elsewhere), the
   descriptor over the whole frame. Rows: the photo as it is (what feature_node gets without a
   CameraInfo D) and the photo undistorted with that k1 (``onboard.undistort``, as feature_node with
   the D given to photo_camera_node's ``distortion``).
2. **Exposure / white balance** on the undistorted photo: gains on its 8-bit values (as
   ``localize_flight.py --exposure/--wb/--gamma``), with and without the per-frame normalization
   ``onboard.photometric`` (feature_node's ``photometric: grayworld``) applied to both the photo
   and the render (as to a map built with ``MapConfig.photometric = 'grayworld'``; the render's
   statistics from its pixels on the orthophoto only).

    PYTHONPATH=. .venv/bin/python benchmarks/photo_measurement.py \\
        --photos ../shared/datasets/brighton_beach/images \\
        --ortho ../shared/datasets/brighton_beach/brighton_beach.jpg --out out/photo_measurement

The FP32 graph at the photos' aspect (126x224 for 16:9) is exported into --out when missing (torch
only then), the vocabulary is $GPLQ_HOME's. A development measurement on 18 photos: report it as such.
"""
import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np

from gplq_ros.onboard.engine import load
from gplq_ros.onboard.paths import default_vocab
from gplq_ros.onboard.photometric import TARGET_MEAN, TARGET_STD, normalize_photometric as normalize
from gplq_ros.onboard.photos import intrinsics, list_photos, load_image, map_camera, read_photo, scale_k
from gplq_ros.onboard.preprocess import read_rgb, resolve_size
from gplq_ros.onboard.undistort import Undistorter

GAINS = {'exposure x0.6': (0.6, (1.0, 1.0), 1.0), 'exposure x1.5': (1.5, (1.0, 1.0), 1.0),
         'white balance R x1.2 B x0.8': (1.0, (1.2, 0.8), 1.0), 'gamma 0.7': (1.0, (1.0, 1.0), 0.7),
         'gamma 1.4': (1.0, (1.0, 1.0), 1.4)}


def photometric(rgb, exposure=1.0, wb=(1.0, 1.0), gamma=1.0):
    gains = np.array([exposure * wb[0], exposure, exposure * wb[1]], np.float32)
    v = np.clip(rgb.astype(np.float32) * gains, 0, 255)
    if gamma != 1.0:
        v = 255 * (v / 255) ** gamma
    return np.round(v).astype(np.uint8)


def normalize_valid(rgb, valid):
    """``normalize`` with its statistics from the ``valid`` pixels only (a map tile has no no-data)."""
    x = rgb.astype(np.float32)
    m = x[valid].mean(0)
    x *= m.mean() / np.maximum(m, 1e-3)
    v = x[valid]
    x = (x - v.mean()) / max(float(v.std()), 1e-3) * TARGET_STD + TARGET_MEAN
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def ncc(a, b, mask=None):
    if mask is not None:
        a, b = a[mask], b[mask]
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def pixel_scale(src_wh, dst_wh):
    """3x3 map from pixels of an image of size ``dst_wh`` to the same image at ``src_wh`` (about pixel centres)."""
    sx, sy = src_wh[0] / dst_wh[0], src_wh[1] / dst_wh[1]
    return np.array([[sx, 0, (sx - 1) / 2], [0, sy, (sy - 1) / 2], [0, 0, 1]])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--photos', type=Path, required=True)
    ap.add_argument('--ortho', type=Path, required=True)
    ap.add_argument('--out', type=Path, default=Path('out/photo_measurement'))
    ap.add_argument('--width', type=int, default=640, help="published width (photo_camera_node's default)")
    ap.add_argument('--fit-width', type=int, default=1280, help='photo width for the registration')
    ap.add_argument('--k1-grid', type=float, nargs=3, default=[-0.2, 0.1, 0.01], metavar=('LO', 'HI', 'STEP'))
    ap.add_argument('--min-inliers', type=int, default=40)
    ap.add_argument('--min-coverage', type=float, default=0.6, help='share of the footprint on the orthophoto')
    ap.add_argument('--threads', type=int, default=1)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    metas = sorted((read_photo(p) for p in list_photos(args.photos)), key=lambda m: (m.time_s or 0, m.path.name))
    cam = map_camera(metas, args.width)
    size = (cam.width, cam.height)
    m0 = metas[0]
    fit_size = (args.fit_width, int(round(m0.height * args.fit_width / m0.width)))
    k_fit = scale_k(intrinsics(m0), (m0.width, m0.height), fit_size)
    k_out = scale_k(intrinsics(m0), (m0.width, m0.height), size)
    input_hw = resolve_size(size[1], size[0], 224)
    graph = args.out / f'fp32_{input_hw[0]}x{input_hw[1]}.onnx'
    if not graph.is_file():
        from gplq_ros.offline import api                 # torch: only to export the missing graph
        api.export_fp32(api.load_extractor(), graph, tuple(input_hw))
    engine = load(graph, default_vocab(), threads=args.threads)
    ortho = read_rgb(args.ortho)
    gray = cv2.cvtColor(ortho, cv2.COLOR_RGB2GRAY)        # no-data: white or black (as onboard.georef_fit)
    valid = cv2.erode(((gray < 250) & (gray > 5)).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(np.float32)
    sift = cv2.SIFT_create(nfeatures=20000)
    okp, odes = sift.detectAndCompute(cv2.cvtColor(ortho, cv2.COLOR_RGB2GRAY), None)
    oxy = np.float32([k.pt for k in okp])
    matcher = cv2.FlannBasedMatcher({'algorithm': 1, 'trees': 4}, {'checks': 64})
    t0 = time.perf_counter()
    matches = {}
    for m in metas:
        kp, des = sift.detectAndCompute(cv2.cvtColor(load_image(m, fit_size[0]), cv2.COLOR_RGB2GRAY), None)
        pairs = matcher.knnMatch(des, odes, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.75 * p[1].distance]
        matches[m.path.name] = (np.float32([kp[g.queryIdx].pt for g in good]), oxy[[g.trainIdx for g in good]])
    print(f'matched {len(metas)} photos in {time.perf_counter() - t0:.0f} s', flush=True)

    def fit(name, k1, thresh=2.0):
        src, dst = matches[name]
        if len(src) < 8:
            return None, 0
        und = cv2.undistortPoints(src.reshape(-1, 1, 2), k_fit, np.array([k1, 0, 0, 0, 0.0]), P=k_fit).reshape(-1, 2)
        h, inl = cv2.findHomography(und, dst, cv2.RANSAC, thresh, maxIters=5000, confidence=0.999)
        return h, int(inl.sum()) if inl is not None else 0

    lo, hi, step = args.k1_grid
    grid = np.round(np.arange(lo, hi + step / 2, step), 6)
    inliers = {float(k1): {m.path.name: fit(m.path.name, k1)[1] for m in metas} for k1 in grid}
    registered = [m for m in metas if inliers[0.0][m.path.name] >= args.min_inliers]
    totals = {k1: sum(v[m.path.name] for m in registered) for k1, v in inliers.items()}
    k1_best = max(totals, key=totals.get)
    print(f'k1 {k1_best:g}: {totals[k1_best]} inliers over {len(registered)} registered photos '
          f'(k1 0: {totals[0.0]})', flush=True)

    info = SimpleNamespace(width=size[0], height=size[1], k=k_out.ravel().tolist(), d=[k1_best, 0, 0, 0, 0.0],
                           distortion_model='plumb_bob')
    undistorter = Undistorter()
    to_fit = pixel_scale(fit_size, size)
    rows = {}

    def compare(key, frame, render, cells):
        o, r = engine(frame), engine(render)
        rows.setdefault(key, []).append((ncc(o.boundary, r.boundary, cells), float(o.descriptor @ r.descriptor)))

    covered = []
    for m in registered:
        h, _ = fit(m.path.name, k1_best)
        on = cv2.warpPerspective(valid, h @ to_fit, size,
                                 flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)
        if on.mean() < args.min_coverage:
            continue                    # the photo's footprint leaves the orthophoto: too little map view
        gh, gw = input_hw[0] // 14, input_hw[1] // 14
        cells = cv2.resize(on, (gw, gh), interpolation=cv2.INTER_AREA) > 0.999
        covered.append((m.path.name, round(float(on.mean()), 3), int(cells.sum())))
        render = cv2.warpPerspective(ortho, h @ to_fit, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_REFLECT)
        photo = load_image(m, size[0])
        und, _ = undistorter(photo, info)
        compare('photo as it is', photo, render, cells)
        compare(f'photo undistorted (k1 {k1_best:g})', und, render, cells)
        for label, (ex, wb, gam) in GAINS.items():
            compare(f'undistorted, {label}', photometric(und, ex, wb, gam), render, cells)
            compare(f'undistorted, {label}, both normalized', normalize(photometric(und, ex, wb, gam)),
                    normalize_valid(render, on > 0.5), cells)
        compare('undistorted, both normalized', normalize(und), normalize_valid(render, on > 0.5), cells)
        if len(covered) == 1:
            cv2.imwrite(str(args.out / f'{m.path.stem}_photo_render.jpg'),
                        cv2.cvtColor(np.hstack([photo, und, render]), cv2.COLOR_RGB2BGR))
    summary = {k: {'boundary_ncc_mean': float(np.mean([a for a, _ in v])),
                   'boundary_ncc_min': float(np.min([a for a, _ in v])),
                   'descriptor_cosine_mean': float(np.mean([b for _, b in v])),
                   'descriptor_cosine_min': float(np.min([b for _, b in v]))} for k, v in rows.items()}
    out = {'photos': len(metas), 'registered': [m.path.name for m in registered], 'compared': covered, 'k1': k1_best,
           'inliers_by_k1': {f'{k:g}': t for k, t in totals.items()}, 'graph': str(graph),
           'camera': f'{size[0]}x{size[1]}, fx {k_out[0, 0]:.1f}', 'rows': summary}
    (args.out / 'summary.json').write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == '__main__':
    main()
