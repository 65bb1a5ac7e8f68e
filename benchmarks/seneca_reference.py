"""Reference poses and a pass-A orthophoto for the ``seneca`` real photo set, made from the photos themselves.

The set (``/work/shared/datasets/seneca``, README there) is 167 near-infrared photos (1600x1200) of a
fixed-wing survey with EXIF GPS latitude/longitude/altitude and capture time, two passes over the same
fields (pass A: IMG_0446-0515, pass B: IMG_0516-0612), and nothing else: no orthophoto, no reference
poses, no height above ground. This script makes them, outside what the package ships (pycolmap is
benchmark tooling, not a runtime requirement):

1. **EXIF** (``onboard.photos.read_photo``): GPS to UTM (``onboard.geo``, the zone of the first photo),
   capture times, the pass of each photo (``--pass-a FIRST LAST``: file-name stems, inclusive).
2. **Structure from motion** (pycolmap, CPU): SIFT on every photo (at most ``--max-image-size`` px,
   ``--max-features``), one shared SIMPLE_RADIAL camera started at the EXIF focal length
   (``FocalLength / --sensor-width-mm * width``, principal point at the centre); image pairs chosen
   from the GPS (every pair whose horizontal GPS distance is under ``--pair-radius`` m, across passes
   too, plus ``--sequential`` capture-order neighbours within a pass: early-season fields have little
   texture, so a sequential matcher alone breaks into pieces); pycolmap's matcher and two-view
   verification on those pairs; pycolmap's incremental mapper (several models allowed). Features,
   matches and models are cached in ``--out``/colmap and reused while their settings are the same (a
   changed ``--pair-radius`` matches only the new pairs), so steps 3-5 can be rerun in seconds.
3. **Geo-reference** of the largest model: a 3D similarity (scale, rotation, translation) from the model's
   camera centres to the photos' GPS (UTM easting, northing, EXIF altitude), RANSAC over 3-photo samples
   (inlier: horizontal residual under ``--gps-inlier-m``, vertical under twice that) and Umeyama's
   least squares on the inliers. The EXIF position lags the exposure (the camera is ahead of its GPS
   along the track, more so the faster it flies): unless ``--no-gps-lag``, one lag ``dt`` (s) for the
   flight is fitted with the similarity, the GPS read as the position ``dt`` before the exposure
   (``gps = p - dt v``, v the horizontal velocity along the fitted track from the capture-order
   neighbours; the EXIF times have whole seconds only). Per photo the horizontal and vertical residual
   (model minus lag-corrected GPS: the GPS noise plus the model's error) and the raw one (model minus the
   EXIF GPS as it is).
4. **Ground plane** fitted (RANSAC, then least squares on the inliers) to the sparse points of the
   geo-referenced model; per photo: UTM easting/northing of the camera centre, height above that plane,
   the camera's yaw (this project's convention: the image x axis from east, counter-clockwise, as
   ``onboard.flight``; and the azimuth of the image top, -v, clockwise from north; both in the UTM grid,
   the map frame: true north lies ``true_north_grid_azimuth_deg`` clockwise of grid north), its tilt
   (angle between the optical axis and the vertical), the ground point of the image centre, the GPS,
   the residuals; flagged ``registered`` (in the geo-referenced model) or not.
5. **Orthophoto of pass A**: a north-up grid of ``--gsd`` m pixels in the UTM zone over the registered
   pass-A photos' footprints; each pixel is the ground-plane point's projection into the most nadir
   registered pass-A photo that sees it (the smallest angle between its viewing ray and the vertical),
   sampled bilinearly from the photo pre-shrunk (area average) to about the orthophoto's GSD; pixels no
   photo sees are transparent (alpha 0). Photometry (``--no-flat-field``, ``--no-exposure`` turn it off):
   each photo divided by the smoothed mean of all 167 photos (the lens's vignetting and the bright
   centre), then one gain per photo and colour channel that equalizes overlapping photos (least squares
   on log mean colours over each overlapping pair, held towards 1): the camera's auto-exposure differs
   between a white and a red field, and seams would be edges in the map. Written as a tiled Deflate
   GeoTIFF in WGS 84 / UTM (``orthosource.write_tiled_geotiff``, RGBA), which ``geotiff.read_geotiff``,
   ``orthosource.open_source`` and ``gplq_map`` read with its GSD and georeference (the script reads it
   back through the first two to check); a PNG preview at a quarter of the size beside it.
6. Everything goes to ``--out``: ``poses.csv`` / ``poses.json`` (step 4), ``georef.json`` (step 3: the
   transform and per-photo residuals), ``ortho_pass_a.tif`` + ``ortho_pass_a.json`` +
   ``ortho_pass_a_preview.png`` (step 5), ``summary.json`` (all figures printed), ``colmap/`` (database,
   pairs, the sparse models in COLMAP's binary format). A progress line per step with the elapsed time.

README
------
Install the SfM library into the project's venv (benchmark tooling only; not in requirements.txt)::

    .venv/bin/python -m pip install pycolmap==4.2.1      # the CPU wheel from PyPI this was made with

Run (all 167 photos; figures in the final summary and ``summary.json``)::

    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python benchmarks/seneca_reference.py \\
        --photos /work/shared/datasets/seneca/images --out out/seneca_reference --threads 2

Build a place map of the orthophoto (its GeoTIFF tags give the GSD and the UTM georeference)::

    gplq_map out/seneca_reference/ortho_pass_a.tif --out out/seneca_map.safetensors \\
        --photos /work/shared/datasets/seneca/images --sensor-width-mm 6.17 --heights H

with ``H`` the flying height above ground from ``summary.json`` (the photos carry no RelativeAltitude).
Reference poses of a photo: ``poses.csv`` (one row per photo, ``registered`` True/False).

Measured (2026-12-07, pycolmap 4.2.1 CPU wheel, 2-core AMD Zen 4 shared with other jobs; stage times
from runs at 1 thread, the caches make reruns of steps 3-6 take about 20 s):

* SIFT of 167 photos 912 s (1600x1200, about 13,300 keypoints each); matching 3,222 GPS pairs 1,466 s
  (the 1,470 pairs of ``--pair-radius 60`` 655 s), 2,001 verified; mapping 657 s: about 51 minutes
  from nothing at 1 thread.
* One model of 166 of 167 photos: pass A 69 of 70 (IMG_0482 not: a bare field; one verified pair
  only, 67 inliers with IMG_0557, none with its strip neighbours), pass B 97 of 97; 151 k points,
  mean reprojection error 0.41 px; focal 1,132 px (EXIF 1,115 px at 6.17 mm), k1 -0.024.
* GPS fit: lag 0.35 s; horizontal residual median 1.83 m, p95 5.11 m, max 7.7 m (EXIF GPS as it is:
  2.61 / 6.24 / 11.3 m); vertical |residual| median 0.58 m. ``--pair-radius 60`` gave one model of the
  same 166 photos too, camera centres within 0.14 m (p95 0.06 m) of these and heights within 0.2 m:
  the reference depends little on the pair choice (60 m is 13 minutes faster; but a 27-photo subset of
  two neighbouring strips, 90 m apart, split into two models at 60 m and not at 100 m: 100 m is the
  default).
* Ground plane slope 0.3 deg (Ohio farmland); height above it median 64.4 m (p5 60.2, p95 69.7);
  tilt median 6.9 deg, p95 14.4 deg, max 21.7 deg (turns); true north lies 1.51 deg clockwise of UTM
  17N grid north here.
* Orthophoto: 2165 x 2213 px at 0.25 m (541 x 553 m, EPSG:32617), 51 % of the rectangle covered by
  the 69 pass-A photos; view angle from the vertical median 18 deg, p95 39 deg. gplq_map builds a map
  of it (georeference and GSD from its tags); its tiles cover the whole rectangle, the uncovered
  (alpha 0, black) corners included.

What the reference is and is not: the poses come from one structure-from-motion model fitted to the
photos' own consumer-GPS positions, so its absolute placement is only as good as the GPS average
(the 166 residuals scatter by about 2 m; a common bias of the GPS stays in the reference), while its
photo-to-photo geometry is much tighter than the GPS (sub-pixel reprojection, the pair-set check above).
Altitudes are in the EXIF GPS datum (above sea level, not checked); heights above ground do not depend
on it. The orthophoto lies on a plane: terrain off it (ditches, trees, buildings: sparse points up to
3 m above it at p95) is displaced by its height times the tangent of the viewing angle; seams between
photos remain where the sun's hot spot differs. Photos that did not register have only their GPS.
"""
import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from gplq_ros.onboard.geo import GeoRef, utm_to_wgs84, utm_zone_of, wgs84_to_utm
from gplq_ros.onboard.geotiff import read_geotiff
from gplq_ros.onboard.orthosource import open_source, write_tiled_geotiff
from gplq_ros.onboard.photos import PhotoMeta, list_photos, read_photo

try:
    import pycolmap
except ImportError:                      # benchmark tooling: say how to get it
    pycolmap = None

PASS_A = ('IMG_0446', 'IMG_0515')
T0 = time.perf_counter()


def progress(step: str, text: str) -> None:
    print(f'[{time.perf_counter() - T0:7.1f} s] {step}: {text}', flush=True)


# --- 1. EXIF ---------------------------------------------------------------------------------------------

def read_exif(photos: Path, pass_a: Sequence[str]):
    """(metas by file name, UTM zone (number, north), (N, 3) easting/northing/altitude, pass labels)."""
    metas = sorted((read_photo(p) for p in list_photos(photos)), key=lambda m: m.path.name)
    missing = [m.path.name for m in metas if m.alt_m is None]
    if missing:
        raise SystemExit(f'{missing[0]}: no EXIF GPSAltitude (needed for the 3D similarity)')
    zone = utm_zone_of(metas[0].lat, metas[0].lon)
    gps = np.array([(*wgs84_to_utm(m.lat, m.lon, *zone), m.alt_m) for m in metas])
    labels = ['A' if pass_a[0] <= m.path.stem <= pass_a[1] else 'B' for m in metas]
    return metas, zone, gps, labels


# --- 2. structure from motion ----------------------------------------------------------------------------

def _stamp_ok(path: Path, settings: dict) -> bool:
    return path.is_file() and json.loads(path.read_text()) == settings


def extract(db: Path, photos: Path, metas: List[PhotoMeta], args) -> bool:
    """SIFT features of every photo into ``db`` (kept when the stamp says they were made the same way);
    True when they were kept."""
    m = metas[0]
    focal = m.focal_mm / args.sensor_width_mm * m.width
    settings = {'photos': sorted(p.path.name for p in metas), 'max_image_size': args.max_image_size,
                'max_features': args.max_features, 'camera': f'SIMPLE_RADIAL {focal:.4f},{m.width / 2:g},'
                f'{m.height / 2:g},0'}
    stamp = db.with_name('features.json')
    if db.is_file() and _stamp_ok(stamp, settings):
        progress('2 sfm', f'features from {db}')
        return True
    for p in (db, db.with_name(db.name + '-wal'), db.with_name(db.name + '-shm'), db.with_name('matches.json')):
        p.unlink(missing_ok=True)
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = 'SIMPLE_RADIAL'
    reader.camera_params = settings['camera'].split()[1]
    opts = pycolmap.FeatureExtractionOptions()
    opts.num_threads = args.threads
    opts.max_image_size = args.max_image_size
    opts.sift.max_num_features = args.max_features
    pycolmap.extract_features(db, photos, image_names=settings['photos'], camera_mode=pycolmap.CameraMode.SINGLE,
                              reader_options=reader, extraction_options=opts, device=pycolmap.Device.cpu)
    stamp.write_text(json.dumps(settings))
    progress('2 sfm', f'SIFT features of {len(metas)} photos extracted ({settings["camera"]})')
    return False


def gps_pairs(metas: List[PhotoMeta], gps: np.ndarray, labels: List[str], radius_m: float,
              sequential: int) -> List[Tuple[str, str]]:
    """Image pairs: horizontal GPS distance under ``radius_m``, or within ``sequential`` photos in capture
    order inside one pass."""
    order = sorted(range(len(metas)), key=lambda i: (metas[i].time_s or 0.0, metas[i].path.name))
    rank = {i: r for r, i in enumerate(order)}
    d = np.linalg.norm(gps[:, None, :2] - gps[None, :, :2], axis=2)
    pairs = []
    for i in range(len(metas)):
        for j in range(i + 1, len(metas)):
            near = d[i, j] < radius_m
            seq = labels[i] == labels[j] and abs(rank[i] - rank[j]) <= sequential
            if near or seq:
                pairs.append((metas[i].path.name, metas[j].path.name))
    return pairs


def match(db: Path, pairs: List[Tuple[str, str]], args) -> int:
    """pycolmap's SIFT matcher and two-view verification on ``pairs``: only the pairs not matched yet (the
    stamp lists those matched with the current features); pairs matched before but no longer asked for are
    deleted from the database."""
    stamp = db.with_name('matches.json')
    features = json.loads(db.with_name('features.json').read_text())
    done = set()
    if stamp.is_file():
        old = json.loads(stamp.read_text())
        if old.get('features') == features:
            done = {tuple(p) for p in old['pairs']}
    want = {tuple(p) for p in pairs}
    with pycolmap.Database.open(db) as d:
        ids = {im.name: im.image_id for im in d.read_all_images()}
        if not done:
            d.clear_matches()
            d.clear_two_view_geometries()
        for a, b in done - want:
            d.delete_matches(ids[a], ids[b])
            d.delete_two_view_geometry(ids[a], ids[b])
    todo = sorted(want - done)
    if todo:
        pair_file = db.with_name('pairs_new.txt')
        pair_file.write_text(''.join(f'{a} {b}\n' for a, b in todo))
        mopts = pycolmap.FeatureMatchingOptions()
        mopts.num_threads = args.threads
        popts = pycolmap.ImportedPairingOptions()
        popts.match_list_path = str(pair_file)
        vopts = pycolmap.TwoViewGeometryOptions()
        vopts.ransac.num_threads = 1
        pycolmap.match_image_pairs(db, matching_options=mopts, pairing_options=popts, verification_options=vopts,
                                   device=pycolmap.Device.cpu)
    db.with_name('pairs.txt').write_text(''.join(f'{a} {b}\n' for a, b in sorted(want)))
    stamp.write_text(json.dumps({'features': features, 'pairs': sorted(want)}))
    progress('2 sfm', f'{len(pairs)} GPS pairs: {len(todo)} matched and verified now, {len(want & done)} before, '
             f'{len(done - want)} dropped')
    return len(todo)


def verified_pairs(db: Path) -> Dict[Tuple[str, str], int]:
    """{(name, name): inliers} of the verified pairs in ``db``."""
    with pycolmap.Database.open(db) as d:
        names = {im.image_id: im.name for im in d.read_all_images()}
        ids, geoms = d.read_two_view_geometries()
        out = {}
        for pid, g in zip(ids, geoms):
            a, b = pycolmap.pair_id_to_image_pair(pid)
            n = 0 if g.inlier_matches is None else int(len(g.inlier_matches))
            if n:
                out[(names[a], names[b])] = n
    return out


def reconstruct(db: Path, photos: Path, sparse: Path, args) -> Tuple[Dict[int, 'pycolmap.Reconstruction'], bool]:
    """pycolmap's incremental mapper (several models allowed), written under ``sparse``/<k>; the models there
    are read back instead when the matches and the mapper settings are those they were made from. Returns
    (models, reused)."""
    settings = {'matches_sha256': hashlib.sha256(db.with_name('matches.json').read_bytes()).hexdigest(),
                'seed': args.seed, 'init_min_tri_angle': args.init_min_tri_angle,
                'abs_pose_min_inliers': args.abs_pose_min_inliers}
    stamp = sparse / 'mapping.json'
    if _stamp_ok(stamp, settings):
        models = {int(d.name): pycolmap.Reconstruction(d) for d in sorted(sparse.iterdir()) if d.is_dir()}
        if models:
            return models, True
    if sparse.exists():
        shutil.rmtree(sparse)
    sparse.mkdir(parents=True)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = args.threads
    opts.multiple_models = True
    opts.min_model_size = 3
    opts.ba_refine_principal_point = False
    opts.ba_refine_focal_length = True
    opts.ba_refine_extra_params = True
    opts.extract_colors = False
    opts.random_seed = args.seed
    opts.mapper.init_min_tri_angle = args.init_min_tri_angle
    opts.mapper.abs_pose_min_num_inliers = args.abs_pose_min_inliers
    opts.mapper.random_seed = args.seed
    models = pycolmap.incremental_mapping(db, photos, sparse, options=opts)
    stamp.write_text(json.dumps(settings))
    return models, False


# --- 3. geo-reference ------------------------------------------------------------------------------------

def umeyama(src: np.ndarray, dst: np.ndarray) -> Tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991): (s, R, t)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    e = np.eye(3)
    e[2, 2] = np.sign(np.linalg.det(u @ vt))
    r = u @ e @ vt
    s = float(np.trace(np.diag(sig) @ e) / (a ** 2).sum(1).mean())
    return s, r, md - s * r @ ms


def fit_similarity(src: np.ndarray, dst: np.ndarray, inlier_m: float, seed: int, iters: int = 2000):
    """RANSAC (3-point samples) then Umeyama on the inliers (twice): (s, R, t, inlier mask)."""
    rng = np.random.default_rng(seed)

    def inliers(s, r, t):
        res = (s * src @ r.T + t) - dst
        return (np.linalg.norm(res[:, :2], axis=1) < inlier_m) & (np.abs(res[:, 2]) < 2 * inlier_m)

    best = np.zeros(len(src), bool)
    for _ in range(iters):
        idx = rng.choice(len(src), 3, replace=False)
        if np.linalg.matrix_rank(dst[idx, :2] - dst[idx[0], :2], tol=1.0) < 2:    # collinear on the ground
            continue
        mask = inliers(*umeyama(src[idx], dst[idx]))
        if mask.sum() > best.sum():
            best = mask
    if best.sum() < 3:
        raise SystemExit('geo-reference: no similarity fits 3 photos\' GPS; the model is not usable')
    for _ in range(3):
        s, r, t = umeyama(src[best], dst[best])
        best = inliers(s, r, t)
    return s, r, t, best


def velocities(pos: np.ndarray, times: np.ndarray, max_gap_s: float = 20.0) -> np.ndarray:
    """Horizontal velocity (N, 3; z 0) at each of ``pos`` (in capture order, ``times`` s) from its neighbours:
    central difference, one-sided at the ends and over gaps longer than ``max_gap_s``."""
    v = np.zeros_like(pos)
    for i in range(len(pos)):
        a = i - 1 if i > 0 and times[i] - times[i - 1] <= max_gap_s else i
        b = i + 1 if i + 1 < len(pos) and times[i + 1] - times[i] <= max_gap_s else i
        if times[b] > times[a]:
            v[i, :2] = (pos[b, :2] - pos[a, :2]) / (times[b] - times[a])
    return v


def georeference(centres: np.ndarray, gps: np.ndarray, times: np.ndarray, inlier_m: float, seed: int, lag: bool):
    """Similarity of model ``centres`` to ``gps`` (module text, step 3), with the GPS lag when ``lag``: the
    EXIF position taken as where the camera was ``dt`` seconds before the exposure, ``gps = p - dt v`` (v: the
    horizontal velocity along the fitted track, ``velocities``), alternating the fit and the least-squares
    dt (5 rounds). Rows in capture order. Returns (s, R, t, inliers, dt, v)."""
    dt, v = 0.0, np.zeros_like(gps)
    s, r, t, inl = fit_similarity(centres, gps, inlier_m, seed)
    if lag:
        for _ in range(5):
            v = velocities(s * centres @ r.T + t, times)
            res = (s * centres @ r.T + t) - gps
            dt = float((res[inl, :2] * v[inl, :2]).sum() / max((v[inl, :2] ** 2).sum(), 1e-9))
            s, r, t, inl = fit_similarity(centres, gps + dt * v, inlier_m, seed)
        v = velocities(s * centres @ r.T + t, times)
    return s, r, t, inl, dt, v


# --- 4. ground plane and poses ---------------------------------------------------------------------------

def fit_plane(xyz: np.ndarray, thr_m: float, seed: int, iters: int = 1000):
    """z = a x + b y + c over ``xyz`` (RANSAC, then least squares on the inliers): ((a, b, c), inlier mask)."""
    rng = np.random.default_rng(seed)
    a_all = np.c_[xyz[:, :2], np.ones(len(xyz))]
    best = np.zeros(len(xyz), bool)
    for _ in range(iters):
        idx = rng.choice(len(xyz), 3, replace=False)
        try:
            p = np.linalg.solve(a_all[idx], xyz[idx, 2])
        except np.linalg.LinAlgError:
            continue
        mask = np.abs(a_all @ p - xyz[:, 2]) < thr_m
        if mask.sum() > best.sum():
            best = mask
    for _ in range(2):
        p = np.linalg.lstsq(a_all[best], xyz[best, 2], rcond=None)[0]
        best = np.abs(a_all @ p - xyz[:, 2]) < thr_m
    return p, best


def plane_z(plane, e, n):
    return plane[0] * e + plane[1] * n + plane[2]


def ray_plane(c: np.ndarray, d: np.ndarray, plane) -> np.ndarray:
    """Where rays from ``c`` along ``d`` (N, 3) meet the plane (N, 3); NaN when not in front."""
    a, b, cc = plane
    num = cc + a * c[0] + b * c[1] - c[2]
    den = d[:, 2] - a * d[:, 0] - b * d[:, 1]
    with np.errstate(divide='ignore', invalid='ignore'):
        lam = num / den
    lam = np.where(lam > 0, lam, np.nan)
    return c + lam[:, None] * d


# --- 5. orthophoto ---------------------------------------------------------------------------------------

def footprint(cam, c, r_wc, plane, margin_px: float = 0.0) -> np.ndarray:
    """Ground-plane (E, N) of the image border (a polygon, 4 x 8 points), NaN rows dropped."""
    w, h = cam.width, cam.height
    t = np.linspace(0, 1, 9)[:-1]
    px = np.r_[np.c_[t * w, 0 * t], np.c_[w + 0 * t, t * h], np.c_[w - t * w, h + 0 * t], np.c_[0 * t, h - t * h]]
    px = px + np.sign(np.array([w / 2, h / 2]) - px) * margin_px
    rays = cam.cam_from_img(px)
    rays = np.c_[rays, np.ones(len(rays))] @ r_wc.T
    g = ray_plane(c, rays, plane)[:, :2]
    return g[np.isfinite(g).all(1)]


def flat_field(paths: Sequence[Path], sigma_frac: float = 0.04) -> np.ndarray:
    """Vignetting gain (H/4, W/4, 3) float32: the mean of the photos at quarter size, Gaussian-smoothed
    (sigma ``sigma_frac`` of the width), divided by its mean per channel (a photo is divided by it)."""
    acc = None
    for p in paths:
        im = cv2.imread(str(p), cv2.IMREAD_REDUCED_COLOR_4 | cv2.IMREAD_IGNORE_ORIENTATION).astype(np.float64)
        acc = im if acc is None else acc + im
    mean = cv2.GaussianBlur(acc / len(paths), (0, 0), sigma_frac * acc.shape[1])
    return (mean / mean.mean((0, 1))).astype(np.float32)


def exposure_gains(views, min_common: int = 1000, prior: float = 0.1) -> np.ndarray:
    """Per-photo, per-channel gains (N, 3) that equalize the photos where they overlap: least squares on the
    log of the mean colours over each pair's common pixels (``views``: (r0, r1, c0, c1, inside, score,
    warped) windows of one raster), each log gain held towards 0 with weight ``prior``."""
    rows, rhs = [], []
    n = len(views)
    for a in range(n):
        ra0, ra1, ca0, ca1, ia, _, wa = views[a]
        for b in range(a + 1, n):
            rb0, rb1, cb0, cb1, ib, _, wb = views[b]
            r0, r1, c0, c1 = max(ra0, rb0), min(ra1, rb1), max(ca0, cb0), min(ca1, cb1)
            if r1 - r0 <= 0 or c1 - c0 <= 0:
                continue
            sa = (slice(r0 - ra0, r1 - ra0), slice(c0 - ca0, c1 - ca0))
            sb = (slice(r0 - rb0, r1 - rb0), slice(c0 - cb0, c1 - cb0))
            common = ia[sa] & ib[sb]
            if common.sum() < min_common:
                continue
            ma = wa[sa][common].astype(np.float64).mean(0) + 1.0
            mb = wb[sb][common].astype(np.float64).mean(0) + 1.0
            row = np.zeros(n)
            row[a], row[b] = 1.0, -1.0
            rows.append(row)
            rhs.append(np.log(mb) - np.log(ma))
    rows += list(prior * np.eye(n))
    rhs += [np.zeros(3)] * n
    x = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.exp(x)


def orthophoto(recon, poses_by_name: Dict[str, dict], names: Sequence[str], photos: Path, plane, gsd: float,
               origin_local: np.ndarray, zone, out: Path, args, gain: np.ndarray = None) -> dict:
    """The pass-A orthophoto (module text, step 5): GeoTIFF + preview + report."""
    cams = []
    for name in names:
        p = poses_by_name[name]
        cams.append((name, p['_image'], np.array(p['_c']), np.array(p['_r_wc'])))
    allp = np.vstack([footprint(recon.cameras[im.camera_id], c, r, plane) for _, im, c, r in cams])
    e0, n1 = math.floor(allp[:, 0].min() / gsd) * gsd, math.ceil(allp[:, 1].max() / gsd) * gsd
    e1, n0 = math.ceil(allp[:, 0].max() / gsd) * gsd, math.floor(allp[:, 1].min() / gsd) * gsd
    cols, rows = int(round((e1 - e0) / gsd)), int(round((n1 - n0) / gsd))
    views = []                  # per photo: (window r0, r1, c0, c1, inside mask, nadir score, warped BGR)
    for name, im, c, r_wc in cams:
        cam = recon.cameras[im.camera_id]
        poly = footprint(cam, c, r_wc, plane)
        c0 = max(0, int((poly[:, 0].min() - e0) / gsd) - 1)
        c1 = min(cols, int((poly[:, 0].max() - e0) / gsd) + 2)
        r0 = max(0, int((n1 - poly[:, 1].max()) / gsd) - 1)
        r1 = min(rows, int((n1 - poly[:, 1].min()) / gsd) + 2)
        ee, nn = np.meshgrid(e0 + (np.arange(c0, c1) + 0.5) * gsd, n1 - (np.arange(r0, r1) + 0.5) * gsd)
        world = np.stack([ee, nn, plane_z(plane, ee, nn)], -1).reshape(-1, 3)
        pc = (world - c) @ r_wc                                    # camera frame (r_wc columns: camera axes)
        front = pc[:, 2] > 0.1
        uv = np.full((len(pc), 2), np.nan)
        uv[front] = cam.img_from_cam(pc[front], check_cheirality=False)
        u, v = uv[:, 0].reshape(ee.shape), uv[:, 1].reshape(ee.shape)
        inside = (u >= 1) & (u <= cam.width - 1) & (v >= 1) & (v <= cam.height - 1)
        score = (np.hypot(world[:, 0] - c[0], world[:, 1] - c[1]) /
                 np.maximum(c[2] - world[:, 2], 1e-3)).reshape(ee.shape).astype(np.float32)
        # shrink the photo (area average) to about 1.5 samples per orthophoto pixel
        height = c[2] - plane_z(plane, c[0], c[1])
        s = min(1.0, 1.5 * height / cam.mean_focal_length() / gsd)
        bgr = cv2.imread(str(photos / name), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if (bgr.shape[1], bgr.shape[0]) != (cam.width, cam.height):
            raise SystemExit(f'{name}: {bgr.shape[1]}x{bgr.shape[0]} px, the model\'s camera is '
                             f'{cam.width}x{cam.height}')
        if gain is not None:
            g = cv2.resize(gain, (cam.width, cam.height), interpolation=cv2.INTER_LINEAR)
            bgr = np.clip(bgr / g + 0.5, 0, 255).astype(np.uint8)
        small = cv2.resize(bgr, (round(cam.width * s), round(cam.height * s)), interpolation=cv2.INTER_AREA)
        sx, sy = small.shape[1] / cam.width, small.shape[0] / cam.height
        mx = np.where(inside, u * sx - 0.5, -1).astype(np.float32)      # COLMAP: pixel (0, 0) spans [0, 1)
        my = np.where(inside, v * sy - 0.5, -1).astype(np.float32)
        warped = cv2.remap(small, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        views.append((r0, r1, c0, c1, inside, score, warped))
    exposure = exposure_gains(views) if args.exposure else np.ones((len(views), 3))
    rgb = np.zeros((rows, cols, 3), np.uint8)
    best = np.full((rows, cols), np.inf, np.float32)
    owner = np.full((rows, cols), -1, np.int16)
    for k, (r0, r1, c0, c1, inside, score, warped) in enumerate(views):
        sub = best[r0:r1, c0:c1]
        take = inside & (score < sub)
        px = np.clip(warped[take].astype(np.float32) * exposure[k] + 0.5, 0, 255).astype(np.uint8)
        rgb[r0:r1, c0:c1][take] = px[:, ::-1]
        sub[take] = score[take]
        owner[r0:r1, c0:c1][take] = k
    covered = owner >= 0
    rgba = np.dstack([rgb, np.where(covered, 255, 0).astype(np.uint8)])
    georef = GeoRef(zone[0], zone[1], float(origin_local[0] + e0), float(origin_local[1] + n1))
    tif = out / 'ortho_pass_a.tif'
    tif.unlink(missing_ok=True)
    write_tiled_geotiff(tif, rgba, gsd, georef, tile=256, compression='zlib')
    prev = cv2.resize(rgb[:, :, ::-1], (max(1, cols // 4), max(1, rows // 4)), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(out / 'ortho_pass_a_preview.png'), prev)
    used = np.bincount(owner[covered], minlength=len(cams))
    tilt_px = np.array([poses_by_name[cams[k][0]]['tilt_deg'] for k in range(len(cams))])
    angle = np.degrees(np.arctan(best[covered]))
    lat, lon = utm_to_wgs84(georef.origin_e, georef.origin_n, *zone)
    return {'path': str(tif), 'preview': str(out / 'ortho_pass_a_preview.png'), 'width_px': cols, 'height_px': rows,
            'gsd_m': gsd, 'size_m': [cols * gsd, rows * gsd], 'crs': georef.crs,
            'utm_zone': f'{zone[0]}{"N" if zone[1] else "S"}',
            'origin_top_left_utm': [georef.origin_e, georef.origin_n], 'origin_top_left_wgs84': [lat, lon],
            'coverage': float(covered.mean()), 'photos': len(cams),
            'photos_used': {cams[k][0]: int(n) for k, n in enumerate(used) if n},
            'view_angle_deg_p50_p95_max': [float(np.percentile(angle, 50)), float(np.percentile(angle, 95)),
                                           float(angle.max())],
            'tilt_of_used_photos_deg_max': float(tilt_px[used > 0].max()) if (used > 0).any() else None,
            'exposure_gains_min_max': [float(exposure.min()), float(exposure.max())],
            'plane': 'sparse-point ground plane (poses.json)', 'alpha': '255 = seen by a photo, 0 = not'}


def check_readers(tif: Path, gsd: float) -> dict:
    """Read the GeoTIFF back through the project's readers (geotiff, orthosource) and check GSD and origin."""
    g = read_geotiff(tif)
    src = open_source(tif)
    if g.georef is None or not math.isclose(g.gsd_m, gsd, rel_tol=1e-9) or src.georef != g.georef:
        raise SystemExit(f'{tif}: read back as gsd {g.gsd_m}, georef {g.georef}: not what was written')
    rows, cols = src.shape
    win, cov = src.read_with_coverage(rows // 2 - 128, cols // 2 - 128, 256, 256)
    return {'geotiff.read_geotiff': {'gsd_m': g.gsd_m, 'georef': g.georef.to_dict(), 'crs': g.georef.crs},
            'orthosource.open_source': {'class': type(src).__name__, 'shape': list(src.shape),
                                        'centre_window_coverage': float(cov.mean()),
                                        'centre_window_mean': float(win.mean())}}


# --- the run ---------------------------------------------------------------------------------------------

def pct(x, q):
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.percentile(x, q)) if len(x) else None


def run(args) -> dict:
    if pycolmap is None:
        raise SystemExit('pycolmap is not installed: .venv/bin/python -m pip install pycolmap==4.2.1 '
                         '(benchmark tooling, see the module text)')
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    colmap = out / 'colmap'
    colmap.mkdir(exist_ok=True)
    os.environ.setdefault('OMP_NUM_THREADS', str(args.threads))
    cv2.setNumThreads(args.threads)
    timing = {}

    # 1. EXIF
    t = time.perf_counter()
    metas, zone, gps, labels = read_exif(args.photos, args.pass_a)
    names = [m.path.name for m in metas]
    origin = np.floor(gps.mean(0) / 100.0) * 100.0                  # a local origin: numbers stay small
    origin[2] = 0.0
    gps_local = gps - origin
    n_pass = {p: labels.count(p) for p in 'AB'}
    timing['exif_s'] = time.perf_counter() - t
    progress('1 exif', f'{len(metas)} photos ({n_pass["A"]} pass A, {n_pass["B"]} pass B), UTM {zone[0]}'
             f'{"N" if zone[1] else "S"}, GPS altitude {gps[:, 2].min():.1f}..{gps[:, 2].max():.1f} m, '
             f'{metas[0].model}, focal {metas[0].focal_mm:g} mm')

    # 2. structure from motion
    t = time.perf_counter()
    db = colmap / 'database.db'
    features_reused = extract(db, args.photos, metas, args)
    timing['features_s'] = time.perf_counter() - t
    t = time.perf_counter()
    pairs = gps_pairs(metas, gps, labels, args.pair_radius, args.sequential)
    pairs_matched_now = match(db, pairs, args)
    verified = verified_pairs(db)
    timing['matching_s'] = time.perf_counter() - t
    strong = sum(1 for n in verified.values() if n >= 30)
    progress('2 sfm', f'{len(pairs)} pairs, {len(verified)} verified ({strong} with >= 30 inliers)')
    t = time.perf_counter()
    sparse = colmap / 'sparse'
    models, reused = reconstruct(db, args.photos, sparse, args)
    timing['mapping_s'] = time.perf_counter() - t
    if not models:
        raise SystemExit('structure from motion: no model')
    sizes = sorted(((m.num_reg_images(), k) for k, m in models.items()), reverse=True)
    model_of = {}
    for k, m in models.items():
        for im in m.images.values():
            if im.has_pose:
                model_of.setdefault(im.name, k)
    progress('2 sfm', f'{len(models)} models, registered photos per model {[n for n, _ in sizes]}; '
             f'{len(model_of)} of {len(metas)} photos in some model '
             f'({"read from " + str(sparse) if reused else "mapping"} {timing["mapping_s"]:.0f} s)')
    key = sizes[0][1]
    recon = models[key]

    # 3. geo-reference of the largest model
    t = time.perf_counter()
    idx = {n: i for i, n in enumerate(names)}
    images = {im.name: im for im in recon.images.values() if im.has_pose}
    reg = sorted(images, key=lambda n: (metas[idx[n]].time_s, n))                 # capture order
    centres = np.array([images[n].projection_center() for n in reg])
    target = np.array([gps_local[idx[n]] for n in reg])
    times = np.array([metas[idx[n]].time_s for n in reg])
    s, r_sim, t_sim, inl, lag_s, vel = georeference(centres, target, times, args.gps_inlier_m, args.seed,
                                                    args.gps_lag)
    model_c = s * centres @ r_sim.T + t_sim
    res = model_c - (target + lag_s * vel)                     # against the lag-corrected GPS (what was fitted)
    res_h = np.linalg.norm(res[:, :2], axis=1)
    raw = model_c - target                                     # against the EXIF GPS as it is
    raw_h = np.linalg.norm(raw[:, :2], axis=1)
    pass_of = {n: labels[idx[n]] for n in names}
    geo = {'model': int(key), 'model_images': len(reg), 'scale_m_per_unit': s, 'rotation': r_sim.tolist(),
           'translation_local': t_sim.tolist(), 'local_origin_utm': origin.tolist(),
           'utm_zone': f'{zone[0]}{"N" if zone[1] else "S"}', 'gps_inlier_m': args.gps_inlier_m,
           'inliers': int(inl.sum()), 'gps_lag_s': lag_s,
           'gps_lag': 'EXIF GPS = camera position gps_lag_s seconds before the exposure; residuals are model '
                      'minus (GPS + gps_lag_s * velocity), raw_* model minus the EXIF GPS',
           'horizontal_residual_m': {'median': pct(res_h, 50), 'p95': pct(res_h, 95), 'max': float(res_h.max()),
                                     'rms': float(np.sqrt((res_h ** 2).mean())),
                                     'median_inliers': pct(res_h[inl], 50), 'p95_inliers': pct(res_h[inl], 95)},
           'vertical_residual_m': {'median_abs': pct(np.abs(res[:, 2]), 50), 'p95_abs': pct(np.abs(res[:, 2]), 95),
                                   'rms': float(np.sqrt((res[:, 2] ** 2).mean()))},
           'raw_horizontal_residual_m': {'median': pct(raw_h, 50), 'p95': pct(raw_h, 95),
                                         'max': float(raw_h.max())},
           'per_pass_horizontal_median_m': {p: pct([h for n, h in zip(reg, res_h) if pass_of[n] == p], 50)
                                            for p in 'AB'},
           'photos': {n: {'pass': pass_of[n], 'model_e': float(model_c[i, 0] + origin[0]),
                          'model_n': float(model_c[i, 1] + origin[1]), 'model_alt': float(model_c[i, 2]),
                          'gps_e': float(gps[idx[n], 0]), 'gps_n': float(gps[idx[n], 1]),
                          'gps_alt': float(gps[idx[n], 2]),
                          'residual_e_m': float(res[i, 0]), 'residual_n_m': float(res[i, 1]),
                          'residual_h_m': float(res_h[i]), 'residual_v_m': float(res[i, 2]),
                          'raw_residual_h_m': float(raw_h[i]), 'speed_m_s': float(np.linalg.norm(vel[i])),
                          'inlier': bool(inl[i])}
                      for i, n in enumerate(reg)}}
    (out / 'georef.json').write_text(json.dumps(geo, indent=1))
    timing['georef_s'] = time.perf_counter() - t
    progress('3 georef', f'model {key} ({len(reg)} photos) to GPS: scale {s:.3f} m/unit, {int(inl.sum())} inliers, '
             f'GPS lag {lag_s:.2f} s; horizontal residual median {geo["horizontal_residual_m"]["median"]:.2f} m, p95 '
             f'{geo["horizontal_residual_m"]["p95"]:.2f} m (EXIF GPS as is: '
             f'{geo["raw_horizontal_residual_m"]["median"]:.2f} / {geo["raw_horizontal_residual_m"]["p95"]:.2f} m); '
             f'vertical |median| '
             f'{geo["vertical_residual_m"]["median_abs"]:.2f} m')

    # 4. ground plane and poses
    t = time.perf_counter()
    pts = np.array([p.xyz for _, p in sorted(recon.points3D.items())             # id order: reproducible RANSAC
                    if p.track.length() >= 3 and p.error < 2.0])
    pts = s * pts @ r_sim.T + t_sim
    plane, pin = fit_plane(pts, args.plane_inlier_m, args.seed)
    dev = pts[:, 2] - plane_z(plane, pts[:, 0], pts[:, 1])
    slope_deg = math.degrees(math.atan(math.hypot(plane[0], plane[1])))
    poses, by_name = [], {}
    for i, n in enumerate(names):
        row = {'name': n, 'pass': labels[i], 'registered': n in images, 'model': None,
               'gps_lat': metas[i].lat, 'gps_lon': metas[i].lon, 'gps_e': float(gps[i, 0]), 'gps_n': float(gps[i, 1]),
               'gps_alt': float(gps[i, 2]), 'time_s': metas[i].time_s}
        if n in images:
            im = images[n]
            rq = im.cam_from_world().rotation.matrix()
            r_wc = r_sim @ rq.T                                  # columns: camera x, y, z axes in (E, N, up)
            c = s * im.projection_center() @ r_sim.T + t_sim
            x_ax, y_ax, z_ax = r_wc[:, 0], r_wc[:, 1], r_wc[:, 2]
            g = ray_plane(c, z_ax[None], plane)[0]
            height = float(c[2] - plane_z(plane, c[0], c[1]))
            row.update({'model': int(key), 'e': float(c[0] + origin[0]), 'n': float(c[1] + origin[1]),
                        'alt': float(c[2]), 'height_agl_m': height,
                        'yaw_rad': math.atan2(x_ax[1], x_ax[0]),
                        'yaw_deg': math.degrees(math.atan2(x_ax[1], x_ax[0])),
                        'heading_top_deg': math.degrees(math.atan2(-y_ax[0], -y_ax[1])) % 360.0,
                        'tilt_deg': math.degrees(math.acos(np.clip(-z_ax[2], -1, 1))),
                        'tilt_azimuth_deg': math.degrees(math.atan2(z_ax[0], z_ax[1])) % 360.0,
                        'centre_ground_e': float(g[0] + origin[0]), 'centre_ground_n': float(g[1] + origin[1]),
                        'residual_h_m': geo['photos'][n]['residual_h_m'],
                        'residual_v_m': geo['photos'][n]['residual_v_m'],
                        'raw_residual_h_m': geo['photos'][n]['raw_residual_h_m'],
                        'gps_inlier': geo['photos'][n]['inlier'],
                        '_image': im, '_c': c.tolist(), '_r_wc': r_wc.tolist()})
        elif n in model_of:
            row['model'] = int(model_of[n])               # in a smaller, not geo-referenced model
        poses.append(row)
        by_name[n] = row
    heights = [p['height_agl_m'] for p in poses if p['registered']]
    tilts = [p['tilt_deg'] for p in poses if p['registered']]
    lat_c, lon_c = utm_to_wgs84(*(gps[:, :2].mean(0)), *zone)
    step = np.subtract(wgs84_to_utm(lat_c + 1e-3, lon_c, *zone), wgs84_to_utm(lat_c, lon_c, *zone))
    true_north = math.degrees(math.atan2(step[0], step[1]))
    ground = {'plane_z_of_e_n': {'a': float(plane[0]), 'b': float(plane[1]),
                                 'c_at_local_origin': float(plane[2]), 'local_origin_utm': origin[:2].tolist()},
              'slope_deg': slope_deg, 'points': len(pts), 'inliers': int(pin.sum()),
              'inlier_m': args.plane_inlier_m,
              'ground_alt_at_centre_m': float(plane_z(plane, *gps_local[:, :2].mean(0))),
              'point_deviation_m_p5_p50_p95': [pct(dev, 5), pct(dev, 50), pct(dev, 95)]}
    public = [{k: v for k, v in p.items() if not k.startswith('_')} for p in poses]
    cols = ['name', 'pass', 'registered', 'model', 'e', 'n', 'alt', 'height_agl_m', 'yaw_deg', 'heading_top_deg',
            'tilt_deg', 'tilt_azimuth_deg', 'centre_ground_e', 'centre_ground_n', 'gps_e', 'gps_n', 'gps_alt',
            'residual_h_m', 'residual_v_m', 'raw_residual_h_m', 'gps_inlier', 'gps_lat', 'gps_lon', 'time_s']
    with open(out / 'poses.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, cols, extrasaction='ignore')
        w.writeheader()
        for p in public:
            w.writerow({k: (f'{v:.{8 if k in ("gps_lat", "gps_lon") else 4}f}' if isinstance(v, float) else v)
                        for k, v in p.items()})
    conventions = {
        'e_n_alt': 'UTM easting/northing (m) and altitude (m, the GPS altitude datum: EXIF, above sea level) of '
                   'the camera centre',
        'height_agl_m': 'camera centre above the ground plane, vertical',
        'yaw_deg': 'image x axis (u, right) from UTM grid east, counter-clockwise (onboard.flight, the map frame)',
        'heading_top_deg': 'image top (-v) azimuth, clockwise from UTM grid north',
        'true_north_grid_azimuth_deg': f'{true_north:.3f}: true north lies this far clockwise of grid north here '
                                       '(meridian convergence): true azimuth = grid azimuth - this',
        'tilt_deg': 'optical axis from the vertical (down)',
        'tilt_azimuth_deg': 'grid azimuth the optical axis leans to',
        'centre_ground_e/n': 'where the optical axis meets the ground plane'}
    (out / 'poses.json').write_text(json.dumps({'ground': ground, 'utm_zone': geo['utm_zone'],
                                                'conventions': conventions, 'photos': public}, indent=1))
    timing['poses_s'] = time.perf_counter() - t
    per_pass = {p: sum(1 for q in poses if q['pass'] == p and q['registered']) for p in 'AB'}
    progress('4 poses', f'ground plane slope {slope_deg:.2f} deg ({int(pin.sum())} of {len(pts)} points within '
             f'{args.plane_inlier_m} m); height above ground median {pct(heights, 50):.1f} m '
             f'({pct(heights, 5):.1f}..{pct(heights, 95):.1f} p5..p95); tilt median {pct(tilts, 50):.1f} deg, '
             f'p95 {pct(tilts, 95):.1f}, max {max(tilts):.1f}; registered pass A {per_pass["A"]}/{n_pass["A"]}, '
             f'pass B {per_pass["B"]}/{n_pass["B"]}')

    # 5. orthophoto of pass A
    t = time.perf_counter()
    pass_a = [p['name'] for p in poses if p['pass'] == 'A' and p['registered']]
    gain = flat_field([m.path for m in metas]) if args.flat_field else None
    ortho = orthophoto(recon, by_name, pass_a, args.photos, plane, args.gsd, origin, zone, out, args, gain)
    ortho['flat_field'] = None if gain is None else {
        'gain_min_max': [float(gain.min()), float(gain.max())],
        'what': 'each photo divided by the smoothed mean of all photos (vignetting and hot spot)'}
    ortho['readers'] = check_readers(Path(ortho['path']), args.gsd)
    (out / 'ortho_pass_a.json').write_text(json.dumps(ortho, indent=1))
    timing['ortho_s'] = time.perf_counter() - t
    read_back = ortho['readers']['orthosource.open_source']
    progress('5 ortho', f'{ortho["path"]}: {ortho["width_px"]}x{ortho["height_px"]} px at {args.gsd} m '
             f'({ortho["size_m"][0]:.0f} x {ortho["size_m"][1]:.0f} m, {ortho["crs"]}), coverage '
             f'{ortho["coverage"]:.0%}, {len(ortho["photos_used"])} of {len(pass_a)} pass-A photos used; read back: '
             f'{read_back["class"]} {read_back["shape"]}')

    # 6. summary
    timing['total_s'] = time.perf_counter() - T0
    summary = {'command': args.command, 'pycolmap': pycolmap.__version__, 'threads': args.threads,
               'photos': len(metas), 'per_pass': n_pass, 'registered_per_pass': per_pass,
               'pairs': len(pairs), 'verified_pairs': len(verified),
               'models': [{'model': int(k), 'images': int(n)} for n, k in sizes],
               'georeferenced_model': int(key),
               'not_registered': [p['name'] for p in poses if not p['registered']],
               'camera': {'model': recon.cameras[images[reg[0]].camera_id].model_name,
                          'params': recon.cameras[images[reg[0]].camera_id].params.tolist(),
                          'exif_focal_px': metas[0].focal_mm / args.sensor_width_mm * metas[0].width},
               'gps_lag_s': lag_s, 'gps_residual_h_m': geo['horizontal_residual_m'],
               'gps_residual_h_raw_m': geo['raw_horizontal_residual_m'], 'gps_residual_v_m': geo['vertical_residual_m'],
               'gps_residual_h_median_per_pass_m': geo['per_pass_horizontal_median_m'],
               'height_agl_m': {'median': pct(heights, 50), 'p5': pct(heights, 5), 'p95': pct(heights, 95)},
               'tilt_deg': {'median': pct(tilts, 50), 'p95': pct(tilts, 95), 'max': max(tilts)},
               'true_north_grid_azimuth_deg': true_north,
               'ground': ground, 'ortho': {k: v for k, v in ortho.items() if k != 'photos_used'},
               'mean_reprojection_error_px': recon.compute_mean_reprojection_error(),
               'points3D': recon.num_points3D(), 'timing_s': timing,
               'reused_from_out': {'features': features_reused, 'pairs_matched_in_this_run': pairs_matched_now,
                                   'model': reused}}
    (out / 'summary.json').write_text(json.dumps(summary, indent=1))
    progress('6 done', f'{timing["total_s"]:.0f} s; outputs in {out}')
    print(json.dumps({k: summary[k] for k in ('registered_per_pass', 'models', 'gps_residual_h_m', 'height_agl_m',
                                              'tilt_deg')}, indent=1))
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--photos', type=Path, default=Path('/work/shared/datasets/seneca/images'),
                    help='the seneca photos (default %(default)s)')
    ap.add_argument('--out', type=Path, default=Path('out/seneca_reference'),
                    help='output folder (default %(default)s)')
    ap.add_argument('--pass-a', nargs=2, default=list(PASS_A), metavar=('FIRST', 'LAST'),
                    help='file stems of pass A, inclusive (default %(default)s); the others are pass B')
    ap.add_argument('--threads', type=int, default=1, help='CPU threads for pycolmap and OpenCV (default %(default)s)')
    ap.add_argument('--sensor-width-mm', type=float, default=6.17, help='sensor width for the starting focal '
                    'length (default %(default)s: Canon ELPH 300 HS, 1/2.3")')
    ap.add_argument('--max-image-size', type=int, default=1600, help='SIFT on images at most this many px '
                    '(default %(default)s: full size)')
    ap.add_argument('--max-features', type=int, default=8192, help='SIFT features per photo (default %(default)s)')
    ap.add_argument('--pair-radius', type=float, default=100.0, help='match every pair whose GPS positions are '
                    'closer than this, m (default %(default)s)')
    ap.add_argument('--sequential', type=int, default=3, help='also match this many capture-order neighbours in '
                    'a pass (default %(default)s)')
    ap.add_argument('--init-min-tri-angle', type=float, default=8.0, help='mapper: initial pair triangulation '
                    'angle, deg (default %(default)s)')
    ap.add_argument('--abs-pose-min-inliers', type=int, default=30, help='mapper: inliers to register a photo '
                    '(default %(default)s)')
    ap.add_argument('--gps-inlier-m', type=float, default=10.0, help='GPS fit: horizontal inlier threshold, m '
                    '(vertical: twice it; default %(default)s)')
    ap.add_argument('--no-gps-lag', dest='gps_lag', action='store_false', help='fit the GPS as it is (default: '
                    'estimate the lag of the EXIF GPS behind the exposure, module text step 3)')
    ap.add_argument('--no-flat-field', dest='flat_field', action='store_false', help='orthophoto: no vignetting '
                    'correction (default: photos divided by the smoothed mean of all photos)')
    ap.add_argument('--no-exposure', dest='exposure', action='store_false', help='orthophoto: no per-photo '
                    'exposure gains (default: gains that equalize overlapping photos)')
    ap.add_argument('--plane-inlier-m', type=float, default=1.0, help='ground plane: inlier threshold, m '
                    '(default %(default)s)')
    ap.add_argument('--gsd', type=float, default=0.25, help='orthophoto metres per pixel (default %(default)s)')
    ap.add_argument('--seed', type=int, default=0, help='random seed of the mapper and the RANSACs')
    args = ap.parse_args(argv)
    args.command = ' '.join(['benchmarks/seneca_reference.py'] + list(sys.argv[1:] if argv is None else argv))
    run(args)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
