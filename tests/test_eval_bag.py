"""gplq_eval_bag on a bag written here with known stamps and receipt times (sqlite3, the
storage `ros2 bag record` uses by default on Humble), from rclpy-serialized messages."""
import json

import numpy as np
import pytest
from helpers.bags import CameraBag
from helpers.cli import run_module
from helpers.maps import tiny_place_map

T0 = 1_700_000_000


@pytest.mark.slow
def test_eval_bag_latency_drops_and_foreign_outputs(tmp_path):
    bag = tmp_path / 'flight'
    w = CameraBag(bag)
    lat_ms = []
    for i in range(20):
        stamp_ns = T0 * 10 ** 9 + i * 100_000_000            # 10 Hz
        w.frame(stamp_ns, stamp_ns + 2_000_000)
        if i in (5, 6):
            continue                                         # two frames without output
        latency = 20 + i                                     # ms
        lat_ms.append(latency)
        w.boundary(stamp_ns, stamp_ns + latency * 1_000_000)
    w.boundary((T0 + 99) * 10 ** 9, (T0 + 3) * 10 ** 9, 0.0)   # an output whose stamp no input had
    w.close()
    res = run_module('gplq_ros.tools.eval_bag', bag, '--out', tmp_path / 'r', '--frames', 2)
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads((tmp_path / 'r' / 'summary.json').read_text())
    assert s['topics']['camera'] == '/cam/image'
    assert (s['frames_in'], s['matched'], s['dropped'], s['dropped_steady'], s['outputs_without_input']) == \
        (20, 18, 2, 2, 1)
    assert s['latency_ms']['p50_ms'] == pytest.approx(np.percentile(lat_ms + [3000 - 99000], 50), abs=1e-3)
    assert len(s['pictures']) == 2
    res = run_module('gplq_ros.tools.eval_bag', tmp_path / 'nothing')
    assert res.returncode == 2 and 'not found' in res.stderr


# a GNSS reference: a flight over a place map geo-referenced in UTM 33N (origin: its top-left corner)
GEO = dict(zone=33, north=True, origin_e=400_000.0, origin_n=5_000_000.0)


def _place_map(path, georef=True):
    """A real (tiny) place map file, with or without a georeference."""
    return tiny_place_map(path, GEO if georef else None)


def _true_xy(t):
    return np.array([20.0 + 5.0 * t, -30.0 - 2.0 * t])       # map x east, y north: 5 m/s east, 2 m/s south


def _latlon(xy):
    from gplq_ros.onboard.geo import utm_to_wgs84
    return utm_to_wgs84(GEO['origin_e'] + xy[0], GEO['origin_n'] + xy[1], GEO['zone'], GEO['north'])


def _gnss_flight(path):
    """10 s at 10 Hz: camera frames, boundary maps, the localizer's poses (errors known), the
    photo node's true poses and a 1 Hz GNSS track (stamps 0.05 s after the frames' seconds)
    whose samples at 3.05 and 4.05 s have no fix. Returns the pose errors, m, by frame."""
    w = CameraBag(path)
    errors = {}
    for i in range(100):
        t = i / 10
        ns = T0 * 10 ** 9 + i * 100_000_000
        w.frame(ns, ns + 1_000_000)
        w.boundary(ns, ns + 30_000_000)
        w.true_pose(ns, _true_xy(t), yaw=0.3)
        off = np.array([30.0, 0.0]) if i in (60, 61) else np.array([3.0, 3.5]) if i % 4 else np.array([0.0, 12.0])
        w.pose(ns, _true_xy(t) + off, sigma_m=1.0, yaw=0.3)
        errors[i] = float(np.hypot(*off))
    for k in range(11):
        t = k + 0.05
        ns = T0 * 10 ** 9 + int(round(t * 1e9))
        no_fix = k in (3, 4)
        w.fix(ns, *_latlon(_true_xy(t)), status=-1 if no_fix else 0)
    w.close()
    return errors


def test_eval_bag_with_a_navsatfix_reference(tmp_path):
    """--reference-fix /gps/fix --map MAP: the GNSS track in the map frame (the map's georeference),
    interpolated at the poses' stamps, is the reference; samples without a fix are dropped and
    the poses in the gap they leave (and before the first sample) are counted, not compared; no
    yaw error. Without --reference-fix the bag's */true_pose is the reference, as before."""
    bag = tmp_path / 'flight'
    errors = _gnss_flight(bag)
    pmap = _place_map(tmp_path / 'map.safetensors')
    res = run_module('gplq_ros.tools.eval_bag', bag, '--out', tmp_path / 'r', '--frames', 0,
                     '--reference-fix', '/gps/fix', '--map', pmap)
    assert res.returncode == 0, res.stderr[-2000:]
    loc = json.loads((tmp_path / 'r' / 'summary.json').read_text())['localization']
    ref = loc['reference']
    # samples at 2.05 and 5.05 s are 3 s apart: frames 2.1..5.0 s (30) have no reference, nor 0.0 s (before 0.05)
    compared = [i for i in range(100) if not (21 <= i <= 50 or i == 0)]
    assert (ref['kind'], ref['topic'], ref['georef']) == ('navsatfix', '/gps/fix', 'EPSG:32633')
    assert (ref['samples'], ref['samples_used'], ref['samples_without_fix'], ref['poses_without_reference']) == \
        (11, 9, 2, 31)
    assert ref['sigma_h_p50_m'] == pytest.approx(2.0)
    err = np.array([errors[i] for i in compared])
    assert loc['fixes'] == len(compared) == 69 and loc['fix_rate'] == 1.0
    # 1 cm: the fixes' WGS-84 round trip is < 1 mm (below) and the true track is linear between samples
    assert loc['error_p50_m'] == pytest.approx(np.percentile(err, 50), abs=0.01)
    assert loc['error_p95_m'] == pytest.approx(np.percentile(err, 95), abs=0.01)
    assert loc['error_max_m'] == pytest.approx(30.0, abs=0.01)
    assert loc['within_5m'] == pytest.approx(np.mean(err <= 5))
    assert loc['within_20m'] == pytest.approx(np.mean(err <= 20))
    assert loc['confident_wrong'] == 2 and loc['confident_wrong_share'] == pytest.approx(2 / 69)
    assert loc['inside_2sigma'] == 0.0 and loc['yaw_error_p50_deg'] is None
    assert len(loc['true_track']) == 9 and len(loc['track']) == 69
    assert 'localization: compared with GNSS /gps/fix' in res.stdout, res.stdout
    assert 'within 5 / 10 / 20 m' in res.stdout and 'confident wrong 2 (2.9%)' in res.stdout, res.stdout
    assert (tmp_path / 'r' / 'track.png').is_file()
    # the default reference: the photo node's ~/true_pose (every frame, with yaw)
    res = run_module('gplq_ros.tools.eval_bag', bag, '--out', tmp_path / 'r2', '--frames', 0)
    assert res.returncode == 0, res.stderr[-2000:]
    loc = json.loads((tmp_path / 'r2' / 'summary.json').read_text())['localization']
    assert loc['reference'] == {'kind': 'true_pose', 'topic': '/photo_camera_node/true_pose'}
    assert loc['fixes'] == 100 and loc['yaw_error_p50_deg'] == pytest.approx(0.0, abs=1e-6)
    assert loc['error_max_m'] == pytest.approx(30.0, abs=1e-6)


@pytest.mark.slow
def test_eval_bag_refuses_what_a_navsatfix_reference_cannot_use(tmp_path):
    bag = tmp_path / 'flight'
    _gnss_flight(bag)
    pmap = _place_map(tmp_path / 'map.safetensors')
    bare = _place_map(tmp_path / 'bare.safetensors', georef=False)
    for extra, msg in [(('--map', bare, '--reference-fix', '/gps/fix'), 'has no georeference'),
                       (('--map', tmp_path / 'none.safetensors', '--reference-fix', '/gps/fix'), 'not found'),
                       (('--map', pmap, '--reference-fix', '/gnss'), "'/gnss': not in the bag"),
                       (('--map', pmap, '--reference-fix', '/cam/image'), 'not a sensor_msgs/msg/NavSatFix'),
                       (('--map', pmap, '--reference-fix', '/gps/fix', '--max-gap', 0), 'must be > 0'),
                       # no pose within 0.01 s of samples on both sides: nothing to compare
                       (('--map', pmap, '--reference-fix', '/gps/fix', '--max-gap', 0.01), 'different clocks?'),
                       (('--reference-fix', '/gps/fix'), 'go together')]:
        res = run_module('gplq_ros.tools.eval_bag', bag, '--out', tmp_path / 'r', *extra)
        assert res.returncode == 2 and msg in res.stderr, (extra, res.stderr[-2000:])
    assert not (tmp_path / 'r').exists()


def test_fix_track_and_its_interpolation():
    """The pure helpers of the GNSS reference: map x/y of NavSatFix samples (no fix and NaN
    dropped), linear interpolation only between samples within max_gap of the stamp."""
    from gplq_ros.bringup.bag_report import fix_track, interpolate_track
    from gplq_ros.onboard.geo import GeoRef
    geo = GeoRef(**GEO)
    samples = [(2.0, 0, *_latlon((10.0, -20.0))), (0.0, 2, *_latlon((0.0, 0.0))), (1.0, -1, 0.0, 0.0),
               (3.0, 0, float('nan'), 15.0), (5.0, 1, *_latlon((30.0, -40.0)))]
    ts, xy, dropped = fix_track(samples, geo)
    assert ts.tolist() == [0.0, 2.0, 5.0] and dropped == 2
    np.testing.assert_allclose(xy, [[0, 0], [10, -20], [30, -40]], atol=1e-3)   # series round trip: < 1 mm
    # 3.0 s: 1 s after the 2.0 s sample but 2 s before the next: none; 3.5 s: 1.5 s from both
    at = interpolate_track(ts, xy, [-0.5, 0.0, 1.0, 1.5, 3.0, 3.5, 5.0, 5.1], 1.5)
    assert sorted(at) == [0.0, 1.0, 1.5, 3.5, 5.0]
    np.testing.assert_allclose(at[1.5], [7.5, -15.0], atol=1e-3)
    np.testing.assert_allclose(at[3.5], [20.0, -30.0], atol=1e-3)
