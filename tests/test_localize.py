"""GNSS-free localization as pure logic: geo-referencing, the place map file, the map's tiles
against the flight simulator, the localizer's filter on a synthetic map, and a real map."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run_module
from pyproj import Transformer
from threadpoolctl import threadpool_limits

from gplq_ros.onboard.flight import Flight, FlightConfig
from gplq_ros.onboard.geo import GeoRef, parse_zone, read_world_file, utm_to_wgs84
from gplq_ros.onboard.localize import Localizer, LocalizerConfig, inside_ellipse, summarize
from gplq_ros.onboard.placemap import (FORMAT, MapConfig, MapError, MapMeta, PlaceMap, fit_pca, render_tile,
                                       tile_poses, vocabulary_id)


@pytest.mark.parametrize('zone,north,e,n', [(12, True, 528000.0, 4978000.0), (33, False, 300000.0, 6100000.0),
                                            (31, True, 500000.0, 0.0), (60, True, 800000.0, 7000000.0),
                                            (1, False, 166000.0, 1000000.0)])
def test_utm_to_wgs84_matches_proj(zone, north, e, n):
    proj = Transformer.from_crs(GeoRef(zone, north, 0, 0).crs, 'EPSG:4326', always_xy=True)
    lon, lat = proj.transform(e, n)
    got = utm_to_wgs84(e, n, zone, north)
    # 1e-8 deg ~ 1 mm: Krueger's series to 3rd order is well under that inside a zone (geo.py)
    assert abs(got[0] - lat) < 1e-8 and abs(got[1] - lon) < 1e-8, (got, lat, lon)


def test_utm_to_wgs84_hand_computed_points():
    """Points known without a projection library: the equator on a central meridian, and 1
    degree of latitude along zone 31's central meridian (WGS-84 meridian arc 0..1 deg =
    110,574.389 m, scaled by k0 = 0.9996)."""
    assert utm_to_wgs84(500000.0, 0.0, 31, True) == pytest.approx((0.0, 3.0), abs=1e-12)
    assert utm_to_wgs84(500000.0, 10_000_000.0, 31, False) == pytest.approx((0.0, 3.0), abs=1e-9)
    lat, lon = utm_to_wgs84(500000.0, 0.9996 * 110574.389, 31, True)
    assert lat == pytest.approx(1.0, abs=1e-6) and lon == pytest.approx(3.0, abs=1e-12)


def test_zone_and_world_file_parsing(tmp_path):
    assert parse_zone('12n') == (12, True) and parse_zone('33S') == (33, False)
    for bad in ('12', '61N', 'XN', ''):
        with pytest.raises(ValueError, match='utm zone'):
            parse_zone(bad)
    wf = tmp_path / 'o.pgw'
    wf.write_text('0.1\n0\n0\n-0.1\n528000.05\n4978999.95\n')
    e, n = read_world_file(wf, 0.1)
    assert abs(e - 528000.0) < 1e-6 and abs(n - 4979000.0) < 1e-6
    wf.write_text('0.1\n0.01\n0\n-0.1\n528000.05\n4978999.95\n')
    with pytest.raises(ValueError, match='rotation'):
        read_world_file(wf, 0.1)
    wf.write_text('0.2\n0\n0\n-0.2\n528000.05\n4978999.95\n')
    with pytest.raises(ValueError, match='gsd_m=0.1'):
        read_world_file(wf, 0.1)
    with pytest.raises(ValueError, match='GeoRef.zone'):
        GeoRef(0, True, 0, 0)


def test_map_tiles_are_the_frames_the_flight_renders(images):
    """A tile at a flight pose's (x, y, yaw, height) is that flight frame: the map and the
    simulated camera share one pose convention. (A tile is rendered from its own square of the
    orthophoto, so that shards give the same tiles: OpenCV's fixed-point sampling positions may
    then round differently, by one grey level in a few pixels.)"""
    ortho = images['2019_YELL_2_541000_4977000_image_crop.png']
    flight = Flight(ortho, FlightConfig(width=160, height=120, height_m=12.0, gsd_m=0.1))
    cfg = MapConfig(width=160, height=120, gsd_m=0.1, heights_m=(12.0,), stride_m=4.0)
    for t in (0.0, 7.3, 21.0):
        p = flight.pose(t)
        tile = render_tile(ortho, np.array([p.x_m, p.y_m, p.yaw, p.z_m]), cfg).astype(int)
        diff = np.abs(tile - flight.render(p))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    poses = tile_poses(ortho.shape[:2], cfg)
    h, w = ortho.shape[:2]
    half = 0.5 * math.hypot(160, 120) * cfg.scale(12.0) * 0.1
    assert (poses[:, 0] >= half - 1e-9).all() and (poses[:, 0] <= w * 0.1 - half + 1e-9).all()
    assert (-poses[:, 1] >= half - 1e-9).all() and (-poses[:, 1] <= h * 0.1 - half + 1e-9).all()
    assert len(np.unique(poses[:, 2])) == 8 and np.allclose(np.diff(np.unique(poses[:, 2])), math.pi / 4)


# -- a synthetic map: descriptors a smooth random function of the place and the heading --------------------------
def _feature_fn(seed=0, dim=96, length_m=12.0):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1 / length_m, (dim, 2))
    b = rng.uniform(0, 2 * np.pi, dim)
    wy = rng.normal(0, 1.0, dim)

    def f(x, y, yaw):
        v = np.cos(w @ np.array([x, y]) + b + wy * np.cos(yaw)) + 0.5 * np.sin(wy * np.sin(yaw))
        return (v / np.linalg.norm(v)).astype(np.float32)
    return f


def _synthetic_map(f, size_m=200.0, stride=8.0, headings=8, vocab=None):
    poses = np.array([(x, -y, k * 2 * np.pi / headings, 40.0) for y in np.arange(0, size_m + 1e-9, stride)
                      for x in np.arange(0, size_m + 1e-9, stride) for k in range(headings)])
    desc = np.stack([f(*p[:3]) for p in poses])
    with threadpool_limits(limits=1, user_api='blas'):     # small matrices: BLAS threads only contend (6 s vs 0.04 s)
        mean, basis, explained = fit_pca(desc, 48)
    config = {'stride_m': stride, 'headings': headings, 'heights_m': [40.0], 'gsd_m': 0.1, 'pca_dim': 48}
    meta = MapMeta('dinov2_vits14', 'w' * 64, vocabulary_id(vocab if vocab is not None else np.eye(3)), 'fp32.onnx',
                   'synthetic', 's' * 64, [2000, 2000], config, None, len(poses), explained)
    proj = (desc - mean) @ basis.T
    return PlaceMap(poses, (proj / np.linalg.norm(proj, axis=1, keepdims=True)).astype(np.float32), mean, basis,
                    np.zeros((8, 8), np.float32), meta)


def _track(n=200, rate=10.0, v=(4.0, -3.0), start=(40.0, -40.0)):
    t = np.arange(n) / rate
    xy = np.array(start) + np.outer(t, v)
    yaw = np.full(n, math.atan2(v[1], v[0]))
    return t, xy, yaw


def test_localizer_follows_a_track_and_rejects_what_it_must():
    f = _feature_fn()
    pmap = _synthetic_map(f)
    rng = np.random.default_rng(1)
    t, xy, yaw = _track()

    def query(p, a, noise=0.15):
        d = f(p[0], p[1], a) + rng.normal(0, noise / math.sqrt(96), 96).astype(np.float32)
        return d / np.linalg.norm(d)
    loc = Localizer(pmap, LocalizerConfig(init_fixes=3, init_span_s=1.0))
    est = [loc.update(query(p, a), float(tt)) for tt, p, a in zip(t, xy, yaw)]
    # three agreeing measurements are not enough within 1 s (nearly the same view): the first fix at 1.0 s
    assert all(e.reason == 'initialising' for e in est[:10]) and est[10].fix and est[10].t == pytest.approx(1.0)
    fixes = [(e.t, e.xy, e.cov, e.measurement.yaw) for e in est if e.fix]
    s = summarize(len(t), fixes, list(zip(t, xy, yaw)), 0.0)
    assert s['correct_fix_rate'] >= 0.9 and s['error_p95_m'] <= 5.0, s
    assert s['inside_2sigma'] >= 0.85, s      # a calibrated 2-D Gaussian: 1 - e^-2 = 0.865 inside 2 sigma
    for e in est:
        if e.fix:
            ev = np.linalg.eigvalsh(e.cov)
            assert ev.min() > 0.01 and np.allclose(e.cov, e.cov.T) and e.measurement.yaw_var > 0
    # a frame that looks like a far place (the drone cannot be there 0.1 s later): rejected, tracking goes on
    far = loc.update(query((180.0, -180.0), yaw[0], 0.0), float(t[-1] + 0.1))
    assert not far.fix and far.reason == 'conflict' and far.xy is None and loc.track_drops == 0
    nxt = loc.update(query(xy[-1] + np.array([0.8, -0.6]), yaw[-1]), float(t[-1] + 0.2))
    assert nxt.fix and np.hypot(*(nxt.xy - xy[-1] - [0.8, -0.6])) < 5
    # the clock jumps back (a bag replayed from its start): the filter starts over
    back = loc.update(query(xy[0], yaw[0]), 0.0)
    assert not back.fix and back.reason == 'initialising'
    # too many rejections in a row (frames that look like two places at once: no evidence): lost
    lost = Localizer(pmap, LocalizerConfig(reset_after=3, init_fixes=1, min_margin=0.1, max_fix_sigma_m=100.0))
    assert lost.update(query(xy[0], yaw[0], 0.0), 0.0).fix

    def two_places(i):
        d = f(30.0, -30.0 - 10 * i, yaw[0]) + f(170.0, -170.0 + 10 * i, yaw[0])
        return d / np.linalg.norm(d)
    reasons = [lost.update(two_places(i), 0.1 * (i + 1)).reason for i in range(3)]
    assert reasons == ['ambiguous', 'ambiguous', 'lost'] and lost.x is None


def _same_state(a: dict, b: dict) -> bool:
    """Two ``Localizer.state()``s are equal (arrays element-wise, NaN equal to NaN)."""
    def eq(x, y):
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            return isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and np.array_equal(x, y, equal_nan=True)
        if isinstance(x, (list, tuple)):
            return type(x) is type(y) and len(x) == len(y) and all(eq(u, v) for u, v in zip(x, y))
        if hasattr(x, '__dataclass_fields__'):
            return type(x) is type(y) and all(eq(getattr(x, k), getattr(y, k)) for k in x.__dataclass_fields__)
        return x == y or (x != x and y != y)
    return a.keys() == b.keys() and all(eq(a[k], b[k]) for k in a)


def test_a_filter_fault_leaves_the_filter_as_it_was():
    """Numerical failures of the filter (a LinAlgError from a singular innovation covariance; a NaN
    covariance and an overflow from an absurd time step) raise FilterFault, which is not a
    ValueError (a malformed input is), and leave the filter's state exactly as before the frame:
    the next frame gives the same estimate as on a twin localizer that never saw the faulty one."""
    from gplq_ros.onboard.localize import FilterFault
    f = _feature_fn()
    pmap = _synthetic_map(f)
    t, xy, yaw = _track(30)
    loc, twin = Localizer(pmap), Localizer(pmap)
    for tt, p, a in zip(t, xy, yaw):
        e, e2 = loc.update(f(*p, a), float(tt)), twin.update(f(*p, a), float(tt))
    assert e.fix and np.array_equal(e.xy, e2.xy)
    q, t_last = f(*xy[-1], yaw[-1]), float(t[-1])
    for dt in (1e77, 1e100):       # NaN covariance after the prediction; dt ** 4 overflows
        before = loc.state()
        with pytest.raises(FilterFault) as err:
            loc.update(q, t_last + dt)
        assert not isinstance(err.value, ValueError) and _same_state(loc.state(), before), (dt, err.value)
    assert 'non-finite filter state' in str(pytest.raises(FilterFault, loc.update, q, t_last + 1e77).value)
    # a singular innovation covariance: the update's solve raises LinAlgError (a ValueError), once a FilterFault
    meas = loc.measure(q)
    loc.P = loc.P.copy()
    loc.P[:2, :2] = -meas.cov                     # S = P_xy + R = 0 at the filter's own time (no prediction)
    before = loc.state()
    with pytest.raises(FilterFault, match='LinAlgError') as err:
        loc.update(q, float(loc.t))
    assert isinstance(err.value.__cause__, np.linalg.LinAlgError) and _same_state(loc.state(), before)
    loc.P = twin.P.copy()
    assert _same_state(loc.state(), twin.state())
    with pytest.raises(ValueError, match='non-finite') as err:    # a NaN descriptor is malformed, not a jump
        loc.update(np.full_like(q, np.nan), t_last + 0.05)
    assert not isinstance(err.value, FilterFault) and _same_state(loc.state(), twin.state())
    nxt = xy[-1] + np.array([0.4, -0.3])
    a, b = loc.update(f(*nxt, yaw[-1]), t_last + 0.1), twin.update(f(*nxt, yaw[-1]), t_last + 0.1)
    assert a.fix and b.fix and np.array_equal(a.xy, b.xy) and np.array_equal(a.cov, b.cov)
    assert loc.frames == twin.frames + 5          # every frame is counted, the failed ones too


def test_localizer_refuses_an_ambiguous_place():
    """Two places that look the same: with min_margin the localizer gives no fix there."""
    f = _feature_fn()

    def twin(x, y, yaw):      # the map repeats every 100 m in x
        return f(x % 100.0, y, yaw)
    pmap = _synthetic_map(twin)
    q = twin(30.0, -50.0, 0.0)
    m = Localizer(pmap).measure(q)
    assert m.margin < 0.02
    est = Localizer(pmap, LocalizerConfig(min_margin=0.05)).update(q, 0.0)
    assert not est.fix and est.reason == 'ambiguous'
    clear = Localizer(_synthetic_map(f)).measure(f(30.0, -50.0, 0.0))
    assert clear.margin > 0.05 and np.hypot(*(clear.xy - [30.0, -50.0])) < 5


def with_boundary(pmap, seed=3):
    """``pmap`` with a smooth random boundary orthomap (0.5 m/px, 200 m square) and the camera of
    640x480 px at 70 deg; returns a function that renders a frame's 12x16 boundary map at (xy,
    yaw, height) from it."""
    import cv2

    from gplq_ros.onboard.localize import BoundaryMatcher
    g = cv2.GaussianBlur(np.random.default_rng(seed).uniform(0, 1, (400, 400)).astype(np.float32), (0, 0), 4)
    pmap.meta.config = dict(pmap.meta.config, boundary_res_m=0.5, width=640, height=480, hfov_deg=70.0)
    pmap.boundary = g
    u, v = BoundaryMatcher(pmap).pattern((12, 16))

    def frame(xy, yaw, h):
        c, s_ = math.cos(yaw), math.sin(yaw)
        k = pmap.config.scale(h) * pmap.config.gsd_m
        x, y = xy[0] + k * (u * c + v * s_), xy[1] + k * (u * s_ - v * c)
        return cv2.remap(g, (x / 0.5).astype(np.float32)[None], (-y / 0.5).astype(np.float32)[None],
                         cv2.INTER_LINEAR).reshape(12, 16)
    return frame


def _refinement_world(seed=3):
    """The synthetic map with a smooth random boundary orthomap, and a function that renders a
    frame's 12x16 boundary map at (xy, yaw, height) from it."""
    pmap = _synthetic_map(_feature_fn())
    return pmap, with_boundary(pmap, seed)


def test_boundary_refinement_recovers_position_yaw_and_height():
    """A frame's boundary map sampled from a smooth random orthomap at a known pose: from a
    retrieval 7 m and 12 degrees off, the refinement lands within 0.5 m, 3 degrees, 6 %."""
    import cv2

    from gplq_ros.onboard.localize import BoundaryMatcher
    pmap, frame = _refinement_world()
    true_xy, true_yaw, true_h = np.array([100.0, -90.0]), 0.7, 43.0
    q = frame(true_xy, true_yaw, true_h)
    m = BoundaryMatcher(pmap).refine(q, true_xy + [5.0, -5.0], true_yaw + math.radians(12), 12.0, 20.0)
    # the fine search's grid: 0.5 m, 2.5 deg, heights x 1.035 (half steps 0.35 m diagonal, 1.25 deg, 1.75 %)
    assert m.ncc > 0.95 and np.hypot(*(m.xy - true_xy)) < 0.5 and abs(math.degrees(m.yaw - true_yaw)) < 3
    assert abs(m.height / true_h - 1) < 0.06 and m.edge == ''
    # through the localizer: the refined measurement's covariance is the match's plus the floor
    loc = Localizer(pmap, LocalizerConfig(refine_floor_m=1.5))
    d = _feature_fn()(100.0, -90.0, 0.7)
    meas = loc.measure(d, q)
    assert meas.ncc > 0.95 and np.hypot(*(meas.xy - true_xy)) < 0.5 and meas.weak == ''
    assert 1.5 < meas.sigma < 2.0          # the floor (1.5 m) and the sharp peak's 2 m grid quantization
    with pytest.raises(ValueError, match='boundary map shape'):
        loc.measure(d, np.ones(5, np.float32))
    # the feature node's map_resolution: input (camera-sized boundary map) refines alike
    full = cv2.resize(q, (640, 480), interpolation=cv2.INTER_NEAREST)
    assert np.hypot(*(loc.measure(d, full).xy - true_xy)) < 1.0


def test_a_measurement_covariance_comes_from_its_evidence():
    """Never a constant: the same place seen clearly, through noise, and blurred flat gives
    three different standard deviations, in that order; a place that repeats within the search
    (a second peak as good as the best) spreads the covariance over both peaks; a match at the
    edge of its search is no evidence for a track."""
    from gplq_ros.onboard.localize import BoundaryMatcher
    pmap, frame = _refinement_world()
    loc = Localizer(pmap)
    d = _feature_fn()(100.0, -90.0, 0.7)
    true_xy = np.array([100.0, -90.0])
    q = frame(true_xy, 0.7, 40.0)
    rng = np.random.default_rng(0)
    noisy = q + rng.normal(0, 1.5 * q.std(), q.shape).astype(np.float32)
    m_clean, m_noisy = loc.measure(d, q), loc.measure(d, noisy)
    assert m_clean.sigma < m_noisy.sigma, (m_clean.sigma, m_noisy.sigma)
    assert m_clean.ncc_se < m_noisy.ncc_se and np.hypot(*(m_clean.xy - true_xy)) < 1.0
    # a periodic orthomap (stripes every 8 m along x): position along x ambiguous, along y not
    stripes = np.tile(np.sin(np.arange(400) * 2 * np.pi / 16.0).astype(np.float32)[None, :], (400, 1))
    stripes += 0.5 * np.sin(np.arange(400) * 2 * np.pi / 64.0).astype(np.float32)[:, None]
    pmap.boundary = stripes
    per = Localizer(pmap)
    g = BoundaryMatcher(pmap)
    u, v = g.pattern((12, 16))
    k = pmap.config.scale(40.0) * pmap.config.gsd_m
    import cv2
    x, y = true_xy[0] + k * u, true_xy[1] - k * v
    qs = cv2.remap(stripes, (x / 0.5).astype(np.float32)[None], (-y / 0.5).astype(np.float32)[None],
                   cv2.INTER_LINEAR).reshape(12, 16)
    mp = per.measure(d, qs)
    ev = np.sqrt(np.linalg.eigvalsh(mp.cov))
    assert ev[-1] > 3.0 and mp.second_ncc > mp.ncc - 0.05 and mp.weak != '', (mp.cov, mp.ncc, mp.second_ncc)
    # the best match at the edge of the search (the place lies beyond it)
    pmap2, frame2 = _refinement_world()
    edge = Localizer(pmap2, LocalizerConfig(search_radius_m=4.0))
    far = edge.measure(_feature_fn()(60.0, -60.0, 0.0), frame2(np.array([60.0, -60.0]), 0.0, 40.0))
    assert np.hypot(*(far.retrieval_xy - [60.0, -60.0])) > 4.5 or far.weak == ''
    if np.hypot(*(far.retrieval_xy - [60.0, -60.0])) > 4.5:
        assert 'edge' in far.weak


def _wrong_track(loc, wrong, t0=-0.1):
    """``loc`` tracking ``wrong`` as a confirmed track (as after look-alikes at the start)."""
    loc.x, loc.P, loc.t = np.array([*wrong, 0.0, 0.0]), np.diag([1.0, 1.0, 0.25, 0.25]), t0
    loc.last_fix, loc.last_refined = (t0, wrong.copy(), 1.0), (0.0, 40.0)
    loc.agreeing, loc.confirmed_t = loc.cfg.init_fixes, t0


def test_a_wrong_track_is_dropped_within_a_few_frames_and_never_published():
    """The filter tracks a wrong place 90 m from the truth; every frame's independent measurement
    (retrieval + refinement) shows the true place, clearly better than the track's search: no
    fix near the wrong place, the track dropped after drop_after frames, fixes on the true place
    after init_fixes more; the same with camera-sized boundary maps. A track on the right place is
    left alone."""
    import cv2
    pmap, frame = _refinement_world()
    f = _feature_fn()
    wrong, true = np.array([150.0, -150.0]), np.array([60.0, -60.0])
    for big in (False, True):
        cfg = LocalizerConfig(drop_after=2, init_fixes=2, init_span_s=0.3)
        loc = Localizer(pmap, cfg)
        _wrong_track(loc, wrong)
        q = frame(true, 0.0, 40.0)
        if big:
            q = cv2.resize(q, (640, 480), interpolation=cv2.INTER_NEAREST)
        est = [loc.update(f(*true, 0.0), 0.1 * i, q) for i in range(10)]
        assert [e.reason for e in est[:2]] == ['conflict', 'conflict'] and loc.track_drops == 1
        assert not any(e.fix and np.hypot(*(e.xy - true)) > 5.0 for e in est), [e.reason for e in est]
        first = next(i for i, e in enumerate(est) if e.fix)       # dropped at frame 1, a new track from there
        assert est[first].t - est[cfg.drop_after - 1].t == pytest.approx(cfg.init_span_s), [e.reason for e in est]
        assert all(e.fix and np.hypot(*(e.xy - true)) < 2.0 for e in est[first:])
    ok = Localizer(pmap, LocalizerConfig(init_fixes=2))
    est = [ok.update(f(*true, 0.0), 0.1 * i, frame(true, 0.0, 40.0)) for i in range(30)]
    assert ok.track_drops == 0 and all(e.fix for e in est[20:])     # from init_span_s = 2 s on


def test_a_track_without_independent_support_stops_giving_fixes():
    """When the frames' independent measurements no longer support the track (here: the
    retrieval points 90 m away where the frame does not match, so the independent search is
    weak), the track's own search keeps it, but fixes stop after confirm_window_s."""
    pmap, frame = _refinement_world()
    f = _feature_fn()
    true = np.array([60.0, -60.0])
    loc = Localizer(pmap, LocalizerConfig(init_fixes=2, confirm_window_s=1.0, reset_after=1000))
    est = [loc.update(f(*true, 0.0), 0.1 * i, frame(true, 0.0, 40.0)) for i in range(30)]
    assert est[-1].fix                                    # confirmed from 0 to 2.9 s
    elsewhere = f(150.0, -150.0, 0.0)
    est = [loc.update(elsewhere, 3.0 + 0.1 * i, frame(true, 0.0, 40.0)) for i in range(20)]
    assert all(e.independent.weak for e in est), [e.independent.weak for e in est]
    fixed = [e.t for e in est if e.fix]
    assert fixed and max(fixed) <= 2.9 + 1.0 + 1e-9 and est[-1].reason == 'unconfirmed'
    # a young track (confirmed over 0.5 s) coasts only that long
    young = Localizer(pmap, LocalizerConfig(init_fixes=2, init_span_s=0.5, confirm_window_s=10.0,
                                            reset_after=1000))
    est = [young.update(f(*true, 0.0), 0.1 * i, frame(true, 0.0, 40.0)) for i in range(6)]
    assert est[-1].fix and young.confirmed_t - young.start_t == pytest.approx(0.5)
    est = [young.update(elsewhere, 0.6 + 0.1 * i, frame(true, 0.0, 40.0)) for i in range(20)]
    assert max(e.t for e in est if e.fix) <= 0.5 + 0.5 + 1e-9 and est[-1].reason == 'unconfirmed'
    assert all(np.hypot(*(e.tracked.xy - true)) < 2.0 for e in est)


def test_odometry_drives_the_prediction_once_its_rotation_is_known():
    """Odometry in a frame rotated 30 deg from the map: after 20 m of confirmed track the
    localizer has aligned it (``onboard.odomfit``), and its prediction follows the odometry through a turn
    that a constant-velocity prediction misses. Without odometry it is as before."""
    from gplq_ros.onboard.localize import OdomPose
    f = _feature_fn()
    pmap = _synthetic_map(f)
    rot = math.radians(30.0)
    c, s = math.cos(-rot), math.sin(-rot)
    to_odom = np.array([[c, -s], [s, c]])
    # this map's retrieval-only measurements claim sigma 15-20 m (measurement_scale): fixes up to 20 m sigma, so
    # that every frame of the running track is counted (the aligned odometry fuses only one per 5 m of travel)
    loc = Localizer(pmap, LocalizerConfig(init_fixes=2, max_fix_sigma_m=20.0))
    t, xy, yaw = _track(n=80, rate=10.0, v=(4.0, -3.0), start=(40.0, -40.0))     # 8 s, 40 m
    for tt, p, a in zip(t, xy, yaw):
        o = to_odom @ (p - xy[0]) + [5.0, 7.0]
        loc.update(f(*p, a), float(tt), odom=OdomPose(float(o[0]), float(o[1]), float(a - rot)))
    # the anchors span 40 m, each off by at most half the 8 m grid (the retrieval's quantization): the rotation
    # error is at most atan(8 / 40)
    theta_bound = math.degrees(math.atan2(pmap.config.stride_m, 40.0))
    assert loc.fixes >= 80 - 10 * loc.cfg.init_span_s - 2 and \
        abs(math.degrees(loc.align.alignment().theta - rot)) < theta_bound, (loc.fixes, loc.align.alignment())
    # a sharp turn: 2 s later the drone is 8 m north of its last position instead of 10 m further along
    turned = xy[-1] + np.array([0.0, 8.0])
    o = to_odom @ (turned - xy[0]) + [5.0, 7.0]
    t1 = float(t[-1] + 2.0)
    with_odom = loc._predicted(t1, OdomPose(float(o[0]), float(o[1]), 0.0))
    cv = loc._predicted(t1, None)
    p_odom = (with_odom[0] @ loc.x + with_odom[2])[:2]
    p_cv = (cv[0] @ loc.x + cv[2])[:2]
    assert np.hypot(*(p_odom - turned)) < 1.5 and np.hypot(*(p_cv - turned)) > 8.0, (p_odom, p_cv, turned)
    est = loc.update(f(*turned, yaw[-1]), t1, odom=OdomPose(float(o[0]), float(o[1]), 0.0))
    assert est.fix and np.hypot(*(est.xy - turned)) < 3.0
    with pytest.raises(ValueError, match='odom'):
        loc.update(f(*turned, yaw[-1]), t1 + 0.1, odom=(1.0, 2.0, 0.0))
    with pytest.raises(ValueError, match='OdomPose.x'):
        OdomPose(float('nan'), 0.0, 0.0)


def test_odometry_carries_the_track_between_measurements_with_an_honest_covariance():
    """A flight at 1 Hz, 10 m/s with turns, odometry in a frame rotated 40 deg with a 5 % per metre heading/
    scale error; only every 3rd frame can be measured (the others' descriptors match no place: ambiguous).
    Once the track's measurements span ``odom_min_span_m``, the odometry carries it: the unmeasured frames
    get fixes (``coasted``); errors inside 2-sigma at least as often as a consistent covariance gives
    (86.5 %, minus 3 binomial standard deviations over the fixes of 12 flights: a lenient count, the
    fixes of one flight are correlated) and beyond 3-sigma (Mahalanobis) not more often than it gives
    (exp(-4.5) = 1.1 %, plus 3 standard deviations). When the measurements stop, the fixes stop after
    ``confirm_window_s`` (5 s here; ``reset_after`` high, so that only that rule can stop them): no
    coasting beyond the evidence."""
    from gplq_ros.onboard.localize import OdomPose
    from gplq_ros.onboard.odomfit import rotation
    f = _feature_fn()
    pmap = _synthetic_map(f)
    # min_margin 0.2: this map's places score margins 0.27-0.40, a random descriptor 0.003-0.12; measurement_scale
    # 1: the retrieval's own covariance (the grid's quantization and the top-k spread), not inflated 16x
    cfg = LocalizerConfig(min_margin=0.2, odom_sigma_frac=0.05, measurement_scale=1.0, confirm_window_s=5.0,
                          reset_after=1000)
    inside, beyond, coasted, lost_after = [], [], 0, []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        heading = np.cumsum(rng.normal(0, 0.2, 60)) + rng.uniform(0, 2 * math.pi)
        xy = [np.array([100.0, -100.0])]
        for h in heading[:-1]:
            step = 10.0 * np.array([math.cos(h), math.sin(h)])
            if not (10 < xy[-1][0] + step[0] < 190 and -190 < xy[-1][1] + step[1] < -10):
                step = -step                                      # stay over the map
            xy.append(xy[-1] + step)
        xy = np.array(xy)
        path = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(xy, axis=0).T))])
        odom = (xy - xy[0]) @ rotation(-math.radians(40.0)).T + np.outer(path, rng.normal(0, 0.05, 2))
        loc = Localizer(pmap, cfg)
        for i in range(len(xy)):
            yaw = float(heading[i])
            if i % 3 == 0 and i < 45:
                d = f(*xy[i], yaw) + rng.normal(0, 0.1 / math.sqrt(96), 96).astype(np.float32)
            else:                                                 # a frame no place explains
                d = rng.normal(0, 1, 96).astype(np.float32)
            est = loc.update(d / np.linalg.norm(d), float(i),
                             odom=OdomPose(float(odom[i][0]), float(odom[i][1]), yaw - math.radians(40.0)))
            if est.fix:
                e = est.xy - xy[i]
                inside.append(inside_ellipse(e, est.cov))
                beyond.append(not inside_ellipse(e, est.cov, 3.0))
                coasted += est.coasted
                if i >= 45:
                    lost_after.append(i - 42)
    p, p3 = 1 - math.exp(-2), math.exp(-4.5)
    share, far = float(np.mean(inside)), float(np.mean(beyond))
    print(f'{len(inside)} fixes, {coasted} coasted, inside 2-sigma {share:.3f}, beyond 3-sigma {far:.3f}, last fix '
          f'after the measurements stopped: {max(lost_after, default=0)} s')
    assert coasted >= len(inside) / 3, (coasted, len(inside))
    assert share >= p - 3 * math.sqrt(p * (1 - p) / len(inside)), share
    assert far <= p3 + 3 * math.sqrt(p3 * (1 - p3) / len(inside)), far
    assert lost_after and max(lost_after) <= cfg.confirm_window_s, lost_after


def test_height_input_sets_the_refinement_scale():
    """With the height above ground the refinement searches heights near it only: the frame at
    43 m is found at 43 m +-6 %; given a wrong height (30 m) the search stays near 30 m and
    matches worse; without it, as before (every height of the map's range)."""
    pmap, frame = _refinement_world()
    d = _feature_fn()(100.0, -90.0, 0.7)
    q = frame(np.array([100.0, -90.0]), 0.7, 43.0)
    loc = Localizer(pmap)
    right, wrong, free = loc.measure(d, q, height_m=43.0), loc.measure(d, q, height_m=30.0), loc.measure(d, q)
    assert abs(right.height_m / 43.0 - 1) < 0.06 and right.ncc > 0.95
    # searched: 30 m x 1.1^(-1..1) (height_tolerance), then x 1.035^(-2..2): at most 18 % off
    assert abs(wrong.height_m / 30.0 - 1) < 0.2 and wrong.ncc < right.ncc - 0.05
    assert abs(free.height_m / 43.0 - 1) < 0.06
    with pytest.raises(ValueError, match='height_m'):
        loc.update(d, 0.0, q, height_m=-3.0)


def test_randomized_pca_matches_the_exact_one():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(600, 20)) * np.geomspace(5, 0.5, 20)) @ rng.normal(size=(20, 900)) \
        + 0.05 * rng.normal(size=(600, 900))
    mean, basis, explained = fit_pca(x, 16)
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    assert explained == pytest.approx(float((s[:16] ** 2).sum() / (s ** 2).sum()), rel=1e-4)
    assert np.allclose(mean, x.mean(axis=0), atol=1e-5) and basis.shape == (16, 900)
    assert np.linalg.norm(basis @ vt[:16].T) ** 2 / 16 > 0.999     # the same subspace
    with pytest.raises(MapError, match='at least 2'):
        fit_pca(x[:1], 16)


def test_inside_ellipse():
    cov = np.array([[4.0, 0.0], [0.0, 1.0]])
    assert inside_ellipse(np.array([3.9, 0.0]), cov) and not inside_ellipse(np.array([0.0, 2.1]), cov)


def test_place_map_file_round_trip_and_refusals(tmp_path):
    vocab = np.random.default_rng(0).normal(size=(4, 96)).astype(np.float32)
    pmap = _synthetic_map(_feature_fn(), size_m=40.0, vocab=vocab)
    path = tmp_path / 'm.safetensors'
    pmap.save(path)
    assert json.loads(path.with_suffix('.json').read_text())['format'] == FORMAT
    with pytest.raises(FileExistsError):
        pmap.save(path)
    back = PlaceMap.load(path)
    assert np.array_equal(back.poses, pmap.poses) and np.array_equal(back.descriptors, pmap.descriptors)
    assert back.config.stride_m == 8.0 and back.georef is None
    back.check_vocabulary(vocab)
    with pytest.raises(MapError, match='not the one the map was built with'):
        back.check_vocabulary(vocab + 1)
    with pytest.raises(MapError, match='graph uses'):
        PlaceMap.load(path, weights_sha256='x' * 64)
    with pytest.raises(MapError, match='descriptor length 5'):
        back.project(np.ones(5, np.float32))
    with pytest.raises(MapError, match='not found'):
        PlaceMap.load(tmp_path / 'nope.safetensors')
    (tmp_path / 'junk.safetensors').write_bytes(b'not a map')
    with pytest.raises(MapError, match='not a readable safetensors'):
        PlaceMap.load(tmp_path / 'junk.safetensors')


def test_real_map_finds_its_own_tiles_and_is_geo_referenced(place_map, fp32_graph, vocab_file, images):
    """The gplq_map file of the flight's orthophoto: a tile's own image retrieves it, the
    geo-reference is the one given, the CLI refuses bad options with the field named."""
    from gplq_ros.onboard.engine import load
    from gplq_ros.onboard.flight import DEFAULT_ORTHO
    pmap = PlaceMap.load(place_map)
    meta = json.loads(Path(place_map).with_suffix('.json').read_text())
    assert meta['n_tiles'] == len(pmap.poses) and meta['config']['headings'] == 4
    geo = pmap.georef
    assert geo.crs == 'EPSG:32612' and geo.origin_n == 4978250
    lat, lon = geo.to_wgs84(100.0, -50.0)
    assert (lat, lon) == utm_to_wgs84(528100.0, 4978200.0, 12, True)
    engine = load(Path(fp32_graph), Path(vocab_file))
    loc = Localizer(pmap)
    ortho = images[DEFAULT_ORTHO]
    for i in np.linspace(0, len(pmap.poses) - 1, 6).round().astype(int):
        m = loc.measure(engine(render_tile(ortho, pmap.poses[i], pmap.config)).descriptor)
        assert m.tile == i and np.hypot(*(m.xy - pmap.poses[i, :2])) < 8, (i, m.tile)
    bad = run_module('gplq_ros.tools.map', 'x.png', '--out', 'y', '--gsd', 0.1, '--headings', 0)
    assert bad.returncode == 2 and 'headings=0' in bad.stderr
    bad = run_module('gplq_ros.tools.map', 'x.png', '--out', 'y', '--gsd', 0.1, '--utm-zone', '12N')
    assert bad.returncode == 2 and 'without --utm-origin' in bad.stderr
