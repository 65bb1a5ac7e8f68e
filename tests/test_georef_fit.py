"""Geo-referencing an orthophoto from geotagged photos (onboard.georef_fit, gplq_georef):
WGS-84 -> UTM against geo.py's inverse, the world file through geo.read_world_file and
gplq_map's option parsing, a synthetic case with a known transform, and the real
brighton_beach data set (18 DJI photos of a north-up preview orthophoto; a development set)."""
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from gplq_ros.onboard import geo
from gplq_ros.onboard import georef_fit as gf
from gplq_ros.onboard.geo import read_world_file, utm_to_wgs84
from gplq_ros.onboard.paths import default_images_dir

REPO = Path(__file__).resolve().parents[1]
BRIGHTON = Path(os.environ.get('GPLQ_BRIGHTON_BEACH', REPO.parent / 'shared' / 'datasets' / 'brighton_beach'))
needs_brighton = pytest.mark.skipif(not (BRIGHTON / 'brighton_beach.jpg').is_file(),
                                    reason=f'brighton_beach data set not at {BRIGHTON} (../shared/datasets from '
                                           'the repo root; or set GPLQ_BRIGHTON_BEACH)')


@pytest.fixture(autouse=True)
def _two_threads():
    old = cv2.getNumThreads()
    cv2.setNumThreads(2)
    yield
    cv2.setNumThreads(old)


def test_wgs84_to_utm_inverts_geo_utm_to_wgs84():
    for lat, lon in [(46.8426, -91.9946), (0.001, 3.0), (-33.9, 18.4), (71.0, 25.7), (-0.5, -179.9), (60.0, 179.99),
                     (12.3, -110.9)]:
        zone, north = geo.utm_zone_of(lat, lon)
        e, n = geo.wgs84_to_utm(lat, lon, zone, north)
        assert 160_000 < e < 840_000 and 0 <= n <= 10_000_000     # a zone spans 166-834 km east at the equator
        lat2, lon2 = utm_to_wgs84(e, n, zone, north)
        assert abs(lat2 - lat) < 1e-8 and abs(lon2 - lon) < 1e-8, (lat, lon)       # ~1 mm (the inverse: 3rd order)
    assert geo.utm_zone_of(46.8, -91.99) == (15, True) and geo.utm_zone_of(-1, 179.9) == (60, False)
    # the neighbouring zone's projection of the same point (off its central meridian) still inverts
    e, n = geo.wgs84_to_utm(46.8426, -91.9946, 16, True)
    assert utm_to_wgs84(e, n, 16, True) == pytest.approx((46.8426, -91.9946), abs=1e-8)    # ~1 mm, as above


def _north_up(p=0.25, c=500_123.4, f=4_100_456.7):
    return gf.Fit('north_up', p, 0.0, c, f, [True], [0.0])


def test_world_file_round_trip_through_geo_and_gplq_map(tmp_path):
    from gplq_ros.tools.map import _config
    fit = _north_up()
    path = gf.write_world_file(tmp_path / 'ortho.jgw', fit)
    assert len(path.read_text().splitlines()) == 6
    with pytest.raises(FileExistsError, match='--force'):
        gf.write_world_file(path, fit)
    corner = read_world_file(path, fit.gsd_m)
    assert corner == pytest.approx((fit.c - fit.p / 2, fit.f + fit.p / 2), abs=1e-9)   # repr: exact round trip
    res = gf.GeorefResult(33, True, [], {}, None, fit, [])
    assert (res.georef().origin_e, res.georef().origin_n) == pytest.approx(corner, abs=1e-9)
    # gplq_map --utm-zone 33N --world-file ortho.jgw --gsd <the printed GSD> gives the same GeoRef
    args = SimpleNamespace(image=tmp_path / 'ortho.jpg', stride=8.0, headings=8, heights=[40.0], width=640, height=480,
                           hfov=70.0, gsd=fit.gsd_m, pca_dim=256, utm_zone='33N', utm_origin=None, world_file=path,
                           photos=None, sensor_width_mm=None)
    _, georef = _config(args)
    assert georef == res.georef()
    # the map frame (x east, y north from the top-left corner) lands where the fit puts pixel centres
    u, v = 37.0, 12.0
    e, n = fit.apply(u, v)
    assert (georef.origin_e + (u + 0.5) * fit.p, georef.origin_n - (v + 0.5) * fit.p) == pytest.approx((e, n))
    rotated = gf.Fit('similarity', 0.2, 0.01, 500_000.0, 4_100_000.0, [True], [0.0])
    gf.write_world_file(tmp_path / 'rot.jgw', rotated)
    with pytest.raises(ValueError, match='rotation'):
        read_world_file(tmp_path / 'rot.jgw', rotated.gsd_m)


def test_fit_transform_recovers_similarity_and_rejects_outlier():
    rng = np.random.default_rng(1)
    uv = rng.uniform(0, 2000, (15, 2))
    g, th = 0.12, math.radians(4.0)
    p, q = g * math.cos(th), g * math.sin(th)
    en = np.column_stack([p * uv[:, 0] + q * uv[:, 1] + 400_000, q * uv[:, 0] - p * uv[:, 1] + 5_000_000])
    en += rng.normal(0, 0.5, en.shape)
    en[3] += (30.0, -20.0)
    fit = gf.fit_transform(uv, en, 'similarity', outlier_m=5.0)
    assert fit.inliers == [i != 3 for i in range(15)]
    assert fit.gsd_m == pytest.approx(g, rel=2e-3) and fit.rotation_deg == pytest.approx(4.0, abs=0.1)
    assert fit.rms_m < 1.0 and fit.residuals_m[3] > 30      # 0.5 m per axis: RMS ~0.7 m; the outlier is 36 m off
    nup = gf.fit_transform(uv, en, 'north_up', outlier_m=50.0)
    assert nup.q == 0 and nup.rms_m > 3 * fit.rms_m                           # 4 degrees unexplained
    with pytest.raises(gf.GeorefError, match='at least 2'):
        gf.fit_transform(uv[:1], en[:1])


def _scene():
    if (BRIGHTON / 'brighton_beach.jpg').is_file():
        return cv2.imread(str(BRIGHTON / 'brighton_beach.jpg'))
    found = sorted(Path(default_images_dir()).glob('*.png')) if Path(default_images_dir()).is_dir() else []
    if not found:
        pytest.skip(f'no real image: neither {BRIGHTON}/brighton_beach.jpg nor the asset cache '
                    f'{default_images_dir()} (gplq_assets)')
    return cv2.imread(str(found[0]))


def test_synthetic_photos_recover_known_transform():
    """Photos rendered from a real image at a known scale, yaw and position, geotagged with
    GPS computed from a known pixel -> UTM similarity (6 degrees: not north-up), 0.15 m
    noise, one 25 m GPS outlier and one blank photo: the fit recovers the transform."""
    scene = _scene()
    ortho = cv2.resize(scene, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)     # ortho px = 2 scene px
    g, th, zone = 0.17, math.radians(6.0), (15, True)
    p, q, c, f = g * math.cos(th), g * math.sin(th), 576_000.0, 5_188_000.0
    truth = gf.Fit('similarity', p, q, c, f, [], [])
    rng = np.random.default_rng(3)
    valid = (cv2.cvtColor(scene, cv2.COLOR_BGR2GRAY) < 250).astype(np.uint8)
    pw, ph, k = 640, 360, 0.6                                  # photo px; scene px per photo px
    cands = []
    h, w = scene.shape[:2]
    for ys in np.linspace(0.1, 0.9, 7):
        for xs in np.linspace(0.1, 0.9, 9):
            cx, cy, yaw = xs * w, ys * h, rng.uniform(-180, 180)
            a = k * np.array([[math.cos(math.radians(yaw)), -math.sin(math.radians(yaw))],
                              [math.sin(math.radians(yaw)), math.cos(math.radians(yaw))]])
            m = np.column_stack([a, [cx, cy] - a @ [(pw - 1) / 2, (ph - 1) / 2]])     # photo px -> scene px
            if cv2.warpAffine(valid, m, (pw, ph), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_NEAREST).mean() >= 0.95:
                cands.append((cx, cy, m))
    assert len(cands) >= 8
    cands = [cands[i] for i in np.unique(np.linspace(0, len(cands) - 1, 14).round().astype(int))]
    photos, centres = [], []
    for cx, cy, m in cands:
        img = cv2.warpAffine(scene, m, (pw, ph), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR)
        u, v = (cx + 0.5) * 0.5 - 0.5, (cy + 0.5) * 0.5 - 0.5                  # ortho px of the photo centre
        e, n = truth.apply(u, v)
        photos.append(gf.Photo(f'p{len(photos):02d}', None, image=img))
        centres.append((u, v, e + rng.normal(0, 0.15), n + rng.normal(0, 0.15)))
    texture = [cv2.Laplacian(cv2.cvtColor(p.image, cv2.COLOR_BGR2GRAY), cv2.CV_32F).var() for p in photos]
    bad = f'p{int(np.argmax(texture)):02d}'                    # the GPS outlier: the photo sure to register
    for ph_, (u, v, e, n) in zip(photos, centres):
        ph_.tag = gf.PhotoTag(*utm_to_wgs84(float(e) + (25.0 if ph_.name == bad else 0.0), float(n), *zone))
    blank = np.full((ph, pw, 3), 128, np.uint8)
    photos.append(gf.Photo('blank', gf.PhotoTag(*utm_to_wgs84(c, f, *zone)), image=blank))
    res = gf.fit_georeference(ortho, photos, gf.GeorefConfig(outlier_m=5.0))
    regs = {r.name: r for r in res.registrations}
    assert not regs['blank'].ok and regs['blank'].reason
    real = [p.name for p in photos if p.name != 'blank']
    assert sum(regs[n].ok for n in real) >= 0.75 * len(real), res.report()      # a few may be low-texture
    for name, (u, v, _, _) in zip(real, centres):
        if regs[name].ok:
            assert regs[name].centre_px == pytest.approx((u, v), abs=1.5), name
            assert regs[name].scale == pytest.approx(k * 0.5, rel=0.03)
    sim = res.similarity
    assert (res.zone, res.north) == zone
    # 0.15 m of GPS noise over a >= 50 m spread of >= 10 photos: ~0.3 % of scale, ~0.2 deg
    assert sim.gsd_m == pytest.approx(g, rel=0.01) and sim.rotation_deg == pytest.approx(6.0, abs=0.5), res.report()
    assert [n for n, ok in zip(res.names, sim.inliers) if not ok] == [bad]
    assert sim.rms_m < 0.5
    corners = np.array([(0, 0), (ortho.shape[1], 0), (0, ortho.shape[0]), ortho.shape[1::-1]], float)
    err = np.hypot(*(np.array(sim.apply(*corners.T)) - np.array(truth.apply(*corners.T))))
    assert err.max() < 1.0, err                                # metres, anywhere in the orthophoto
    assert res.north_up.rms_m > 3 * sim.rms_m                   # a north-up fit cannot explain 6 degrees
    assert 'blank: not registered' in res.report()


def _brighton_photos():
    return gf.load_photos(BRIGHTON / 'images')


@needs_brighton
def test_exif_reader_matches_pil():
    PIL = pytest.importorskip('PIL.Image', reason='PIL not installed: the cross-check needs it')
    from PIL import ExifTags
    path = sorted((BRIGHTON / 'images').glob('*.JPG'))[0]
    tag = gf.read_photo_tag(path)
    gps = PIL.open(path).getexif().get_ifd(ExifTags.IFD.GPSInfo)

    def deg(v, ref):
        return (float(v[0]) + float(v[1]) / 60 + float(v[2]) / 3600) * (-1 if ref in 'SW' else 1)
    assert tag.lat == pytest.approx(deg(gps[2], gps[1]), abs=1e-12)
    assert tag.lon == pytest.approx(deg(gps[4], gps[3]), abs=1e-12)
    assert (tag.width, tag.height, tag.focal_35mm) == (4000, 2250, 20.0)
    assert 30 < tag.rel_alt_m < 50 and tag.yaw_deg is not None
    with pytest.raises(gf.GeorefError, match='not a JPEG'):
        gf.read_photo_tag(BRIGHTON / 'README.md')


@pytest.mark.slow
@needs_brighton
def test_brighton_beach_real_photos():
    """Consumer GNSS (a DJI Phantom 3, no RTK) is good to a few metres absolute; over one
    short flight most of that is a common bias that only moves the offset, so the residuals
    hold the photo-to-photo part plus registration (~0.1 m), tilt (1 deg at 40 m: 0.7 m) and
    shutter timing: an RMS above 3 m means a wrong registration or a wrong model."""
    t0 = time.perf_counter()
    res = gf.fit_georeference(BRIGHTON / 'brighton_beach.jpg', _brighton_photos())
    took = time.perf_counter() - t0
    print(res.report())
    print(f'brighton_beach: {len(res.names)}/18 registered in {took:.1f} s')
    assert len(res.names) >= 14, res.report()                  # most of the 18
    assert (res.zone, res.north) == (15, True)
    sim, nup = res.similarity, res.north_up
    assert all(sim.inliers) and all(nup.inliers), res.report()
    assert sim.rms_m < 3.0 and nup.rms_m < 3.0
    assert abs(sim.rotation_deg) < 1.0                         # the orthophoto is north-up, as stated
    # matched headings agree with the EXIF yaw (the return leg's within 180 deg: its yaw is flipped)
    dyaw = [abs(r.yaw_vs_exif_deg) for r in res.registrations if r.ok]
    assert all(min(d, 180 - d) < 10 for d in dyaw), dyaw
    # photo GSD from EXIF: 2 h tan(hfov / 2) / width, hfov of a 20 mm (35 mm equivalent) lens, 36 mm wide
    photo_gsd = 2 * 40.0 * 18 / 20.0 / 4000
    scale = np.median([r.scale for r in res.registrations if r.ok])
    assert nup.gsd_m == pytest.approx(photo_gsd / scale, rel=0.15)     # a sanity check: independent
    assert 0.07 < nup.gsd_m < 0.10


@needs_brighton
def test_gplq_georef_tool(tmp_path, capsys):
    from gplq_ros.tools.georef import main
    photos = tmp_path / 'photos'
    photos.mkdir()
    for name in ('DJI_0025.JPG', 'DJI_0026.JPG', 'DJI_0032.JPG', 'DJI_0033.JPG', 'DJI_0034.JPG'):
        (photos / name).symlink_to(BRIGHTON / 'images' / name)
    out = tmp_path / 'bb.jgw'
    ortho = BRIGHTON / 'brighton_beach.jpg'
    assert main([str(ortho), '--photos', str(photos), '--out', str(out), '--json', str(tmp_path / 'r.json')]) == 0
    text = capsys.readouterr().out
    assert 'registered 5/5 photos' in text and 'RMS residual' in text and '--world-file' in text
    gsd = float(text.split('--gsd ')[1].split()[0])
    e, n = read_world_file(out, gsd)
    assert 570_000 < e < 580_000 and 5_180_000 < n < 5_200_000
    assert main([str(ortho), '--photos', str(photos), '--out', str(out)]) == 2
    assert 'exists (--force to overwrite)' in capsys.readouterr().err
    assert main([str(tmp_path / 'none.jpg'), '--photos', str(photos), '--out', str(tmp_path / 'x.jgw')]) == 2
    assert 'none.jpg: no such file' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    assert main([str(ortho), '--photos', str(tmp_path / 'empty'), '--out', str(tmp_path / 'x.jgw')]) == 2
    assert 'no .jpg/.jpeg files' in capsys.readouterr().err
    (photos / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xd9')
    assert main([str(ortho), '--photos', str(photos), '--out', str(tmp_path / 'x.jgw')]) == 2
    assert 'broken.jpg: corrupt JPEG' in capsys.readouterr().err
    assert main([str(ortho), '--photos', str(photos), '--min-inliers', '2']) == 2     # out of range
    assert not (tmp_path / 'x.jgw').exists()
