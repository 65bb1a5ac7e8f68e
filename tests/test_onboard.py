"""Onboard logic without ROS: newest-frame slot, statistics, drift decisions, the
simulated flight, output layouts, and the bringup definition shared by launch and gplq_up."""
import ast
import math
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gplq_ros.bringup import description as bringup
from gplq_ros.onboard.drift import DriftBounds, DriftMonitor, compare
from gplq_ros.onboard.metrics import corner_repeatability
from gplq_ros.onboard.status import Level
from gplq_ros.onboard.flight import Flight, FlightConfig
from gplq_ros.onboard.slot import LatestSlot
from gplq_ros.onboard.stats import LatencyWindow, RateMeter, StampMatcher

REPO = Path(__file__).resolve().parents[1]


def test_latest_slot_keeps_only_the_newest_frame():
    slot = LatestSlot()
    assert slot.take(timeout=0.01) is None
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True      # 1 and 2 replaced before inference
    assert slot.take(0) == 3 and slot.dropped == 2 and slot.pending == 0
    got = []
    t = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    t.start()
    time.sleep(0.05)
    slot.put(4)
    t.join(2)
    assert got == [4]
    slot.close()
    assert slot.take(timeout=5) is None and slot.closed


def test_latency_window_and_rate():
    w = LatencyWindow(size=100)
    assert w.summary()['p50_ms'] is None
    for v in range(1, 201):
        w.add(v)
    s = w.summary()                      # only the last 100 values (101..200)
    assert s['n'] == 100 and s['max_ms'] == 200 and s['p50_ms'] == pytest.approx(150.5)
    assert s['p95_ms'] == pytest.approx(np.percentile(np.arange(101, 201), 95))
    r = RateMeter(window_s=5)
    for i in range(51):
        r.add(100 + i * 0.1)             # 10 Hz for 5 s
    assert r.rate(105.0) == pytest.approx(10.0, rel=0.05)
    assert r.rate(200.0) == 0.0          # nothing in the window any more
    b = RateMeter(window_s=5, min_span_s=1.0)
    for t in (10.0, 10.05, 10.1, 10.15):  # a burst after a stall, then a 10 Hz stream
        b.add(t)
    assert b.rate(10.2) == 0.0           # 0.2 s of events: no rate claimed yet (a burst, not 20 Hz)
    seen = {}
    for i in range(1, 21):
        b.add(10.15 + 0.1 * i)
        seen[i] = b.rate(10.15 + 0.1 * i)
    assert seen[6] == 0.0 and seen[9] == pytest.approx(12 / 1.05)   # 1.05 s: 13 events
    assert seen[20] == pytest.approx(23 / 2.15)                     # the burst weighs less as the span grows
    with pytest.raises(ValueError, match='min_span_s=6'):
        RateMeter(window_s=5, min_span_s=6)


def test_stamp_matcher_counts_drops_and_foreign_outputs():
    m = StampMatcher(grace_s=1.0)
    for i in range(5):
        m.input((i, 0), now=float(i) * 0.1)
    assert m.output((0, 0)) and m.output((2, 0))
    assert not m.output((9, 9))                              # never an input: header not copied
    assert m.expire(now=0.5) == 0                           # within the grace period
    assert m.expire(now=5.0) == 3 and m.dropped == 3 and m.matched == 2 and m.unmatched == 1
    assert m.drop_rate == pytest.approx(0.6)
    assert not m.output((1, 0)) and m.unmatched == 1        # late output of a dropped frame


def test_drift_monitor_goes_to_error_after_k_failed_checks():
    good = {'descriptor_cosine': 0.9, 'boundary_ssim': 0.9, 'corner_repeatability': 0.9}
    bad = dict(good, boundary_ssim=0.1)
    d = DriftMonitor(DriftBounds(consecutive=3))
    assert d.update(good) == Level.OK
    assert d.update(bad) == Level.WARN and d.last_failed == ['boundary_ssim']
    assert d.update(bad) == Level.WARN
    assert d.update(bad) == Level.ERROR and d.failed_in_a_row == 3
    assert d.update(good) == Level.OK
    with pytest.raises(ValueError, match='boundary_ssim_min=1.5'):
        DriftBounds(boundary_ssim_min=1.5)
    with pytest.raises(ValueError, match='consecutive=0'):
        DriftBounds(consecutive=0)


def test_compare_against_the_reference(fp32_graph, vocab, images):
    from gplq_ros.onboard.engine import load
    eng = load(fp32_graph, centers=vocab.centers)
    frame = np.ascontiguousarray(images['2019_YELL_2_541000_4977000_image_crop.png'][:480, :640])
    ref = eng(frame)
    same = compare(ref, ref.boundary, ref.corners_px, ref.descriptor)
    assert same == pytest.approx({'descriptor_cosine': 1.0, 'boundary_ssim': 1.0, 'corner_repeatability': 1.0})
    other = eng(np.ascontiguousarray(images['2019_YELL_2_541000_4977000_image_crop.png'][480:960, 640:1280]))
    diff = compare(ref, other.boundary, other.corners_px, other.descriptor)
    assert all(diff[k] < 0.9 for k in ('descriptor_cosine', 'boundary_ssim'))
    full = compare(ref, ref.boundary_full, ref.corners_px + 20, None)    # input-resolution map, 20 px shift
    assert full['boundary_ssim'] > 0.99 and full['corner_repeatability'] == 1.0   # within one 40 px cell
    assert corner_repeatability(np.zeros((0, 2)), np.zeros((3, 2)), 1) == 1.0
    assert corner_repeatability(np.zeros((2, 2)), np.zeros((0, 2)), 1) == 0.0
    with pytest.raises(ValueError, match='different vocabularies'):
        compare(ref, None, None, ref.descriptor[:100])


def test_flight_poses_and_frames(images):
    ortho = images['2019_YELL_2_528000_4978000_image_crop2.png']
    cfg = FlightConfig(speed_mps=5.0)
    f = Flight(ortho, cfg)
    poses = [f.pose(t) for t in np.arange(0, 120, 0.1)]
    oh, ow = ortho.shape[:2]
    for p in poses:      # the whole rotated window stays on the orthophoto
        corners = f.affine(p) @ np.array([[0, 0, 1], [639, 0, 1], [0, 479, 1], [639, 479, 1]]).T
        assert corners.min() >= 0 and corners[0].max() < ow and corners[1].max() < oh
    steps = [math.hypot(b.x_m - a.x_m, b.y_m - a.y_m) / 0.1 for a, b in zip(poses, poses[1:])]
    assert 2.5 < np.mean(steps) < 10                                   # metres per second, about speed_mps
    z = [p.z_m for p in poses]
    assert 0.7 * cfg.height_m < min(z) and max(z) < 1.3 * cfg.height_m   # height_amp 0.25: z = height_m (1 +- 0.25)
    assert np.ptp([p.yaw for p in poses]) > 0.5                         # it turns
    p = poses[100]
    frame = f.render(p)
    assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8
    # the frame's centre pixel is the orthophoto at the pose's window centre
    np.testing.assert_allclose(frame[240, 320].astype(float), ortho[int(round(p.row)), int(round(p.col))], atol=40)
    u, v = 600, 40        # and any other pixel maps through the affine
    col, row = f.affine(p) @ np.array([u, v, 1])
    np.testing.assert_allclose(frame[v, u].astype(float), ortho[int(round(row)), int(round(col))], atol=40)
    with pytest.raises(ValueError, match='too small'):
        Flight(ortho[:500, :500], cfg)
    with pytest.raises(ValueError, match='hfov_deg'):
        FlightConfig(hfov_deg=5)


def test_output_layouts_round_trip():
    from gplq_ros.onboard.image_codec import ImageFormatError, numpy_to_image
    from gplq_ros.onboard.messages import (CORNER_DTYPE, CORNER_FIELDS, STATUS_FIELDS, decode_corners,
                                           decode_descriptor, decode_map, decode_status)
    m = np.random.default_rng(0).random((12, 16), dtype=np.float32)
    np.testing.assert_array_equal(decode_map(numpy_to_image(m, '32FC1', msg=SimpleNamespace())), m)
    d = np.random.default_rng(1).random((1, 64), dtype=np.float32)
    np.testing.assert_array_equal(decode_descriptor(numpy_to_image(d, '32FC1', msg=SimpleNamespace())), d[0])
    with pytest.raises(ImageFormatError, match='encoding'):
        decode_map(numpy_to_image((m * 255).astype(np.uint8), 'mono8', msg=SimpleNamespace()))
    rec = np.zeros(3, CORNER_DTYPE)
    rec['u'], rec['v'], rec['response'] = [1, 2, 3], [4, 5, 6], [0.5, 0.25, 0.125]
    cloud = SimpleNamespace(fields=[SimpleNamespace(name=n) for n in CORNER_FIELDS], point_step=12,
                            is_bigendian=False, width=3, height=1, data=rec.tobytes())
    np.testing.assert_array_equal(decode_corners(cloud), [[1, 4, 0.5], [2, 5, 0.25], [3, 6, 0.125]])
    cloud.data = cloud.data[:-4]
    with pytest.raises(ImageFormatError, match='data'):
        decode_corners(cloud)
    status = SimpleNamespace(layout=SimpleNamespace(dim=[SimpleNamespace(label=','.join(STATUS_FIELDS))]),
                             data=list(range(len(STATUS_FIELDS))))
    assert decode_status(status)['latency_p95_ms'] == STATUS_FIELDS.index('latency_p95_ms')


def test_bringup_definition():
    specs = bringup.node_specs({})
    assert [s.name for s in specs] == ['flight_sim_node', 'feature_node', 'monitor_node']
    feat = specs[1]
    assert ('image', 'camera/image_raw') in feat.remappings and ('camera_info', 'camera/camera_info') in feat.remappings
    assert all(s.namespace == '' for s in specs) and '__ns:=' not in ' '.join(bringup.ros_argv(feat))
    assert feat.parameters[-1]['model'].endswith('w4a8_168x224.onnx')
    assert Path(feat.parameters[0]).name == 'feature_node.yaml' and Path(feat.parameters[0]).is_file()
    mon = specs[2]
    # relative names: the monitor reads the feature node of its own namespace
    assert dict(mon.remappings) == {'image': 'camera/image_raw', 'camera_info': 'camera/camera_info',
                                    'boundary_map': 'feature_node/boundary_map',
                                    'corners': 'feature_node/corners', 'descriptor': 'feature_node/descriptor'}
    uav = bringup.node_specs({'namespace': 'uav1'})
    assert {s.namespace for s in uav} == {'/uav1'} and '__ns:=/uav1' in bringup.ros_argv(uav[1])
    assert bringup.resolve({'namespace': '/fleet/uav2/'})['namespace'] == '/fleet/uav2'
    rec = bringup.record_command({'record_bag': 'true', 'namespace': 'uav1'}, stamp='x')
    assert '/uav1/camera/image_raw' in rec and '/uav1/feature_node/descriptor' in rec and '/diagnostics' in rec
    assert '/uav1/flight_sim_node/true_pose' in rec and '/uav1/camera/camera_info' in rec
    assert bringup.camera_info_topic('/drone/cam/image') == '/drone/cam/camera_info'
    assert bringup.camera_info_topic('image') == 'camera_info'
    assert all(s.parameters[-1]['autostart'] is False for s in bringup.node_specs({'autostart': 'false'})[1:])
    specs = bringup.node_specs({'use_sim_camera': 'false', 'camera_topic': '/drone/cam', 'params_file': '/p.yaml',
                                'model': '/m.onnx', 'log_level': 'debug'})
    assert [s.name for s in specs] == ['feature_node', 'monitor_node']
    assert specs[0].parameters == ('/p.yaml', {'model': '/m.onnx', 'autostart': True, 'use_sim_time': False})
    sim = bringup.node_specs({'use_sim_time': 'true'})
    assert all(s.parameters[-1]['use_sim_time'] is True for s in sim) and len(sim) == 3   # every node
    assert '-p' in bringup.ros_argv(sim[0]) and 'use_sim_time:=True' in bringup.ros_argv(sim[0])
    assert ('image', '/drone/cam') in specs[0].remappings and '--log-level' in specs[0].ros_arguments
    assert bringup.record_command({}) is None
    rec = bringup.record_command({'record_bag': 'true', 'bag_dir': '/b'}, stamp='x')
    assert rec[:2] == ['--out', '/b/gplq_x'] and '/feature_node/boundary_map' in rec and '/diagnostics' in rec
    for bad, msg in [({'use_sim_camera': 'yes'}, 'must be true or false'), ({'use_sim_time': 'y'}, 'use_sim_time'),
                     ({'nope': '1'}, 'unknown launch'), ({'camera_topic': 'cam era'}, 'not a ROS topic'),
                     ({'camera_topic': '/cam/'}, 'not a ROS topic'), ({'namespace': 'uav 1'}, 'not a ROS namespace'),
                     ({'autostart': 'maybe'}, 'autostart'),
                     ({'log_level': 'loud'}, 'log_level')]:
        with pytest.raises(ValueError, match=msg):
            bringup.node_specs(bad)


def test_bringup_plays_photos_instead_of_the_simulated_flight(tmp_path):
    """photos:=DIR: photo_camera_node (not flight_sim_node) is the camera, on camera_topic and its
    camera_info, from when feature_node subscribes; with a geo-referenced place_map its georeference is
    passed on (its ~/true_pose is then in the localizer's map frame); record_bag records its fix and true
    pose. The default is unchanged."""
    from helpers.maps import tiny_place_map
    photos = tmp_path / 'photos'
    geo = tiny_place_map(tmp_path / 'geo.safetensors', dict(zone=33, north=False, origin_e=400000.0,
                                                            origin_n=6000000.0))
    bare = tiny_place_map(tmp_path / 'bare.safetensors')
    assert [s.name for s in bringup.node_specs({})] == ['flight_sim_node', 'feature_node', 'monitor_node']
    specs = {s.name: s for s in bringup.node_specs({'photos': str(photos), 'camera_topic': '/drone/cam/image',
                                                    'place_map': str(geo), 'namespace': 'uav1'})}
    assert list(specs) == ['photo_camera_node', 'feature_node', 'monitor_node', 'localizer_node']
    cam = specs['photo_camera_node']
    assert cam.module == 'gplq_ros.nodes.photo_camera_node' and cam.namespace == '/uav1'
    assert Path(cam.parameters[0]).name == 'photo_camera_node.yaml' and Path(cam.parameters[0]).is_file()
    assert dict(cam.remappings) == {'image': '/drone/cam/image', 'camera_info': '/drone/cam/camera_info'}
    assert cam.parameters[1] == {'photos': str(photos), 'utm_zone': '33S', 'utm_origin_e': 400000.0,
                                 'utm_origin_n': 6000000.0, 'wait_for_node': 'feature_node', 'use_sim_time': False}
    assert 'utm_zone:=33S' in bringup.ros_argv(cam) and 'utm_origin_e:=400000.0' in bringup.ros_argv(cam)
    from gplq_ros.onboard.photos import PhotoCameraConfig     # the node's settings take these values
    assert PhotoCameraConfig(**{k: v for k, v in cam.parameters[1].items() if k != 'use_sim_time'}).georef.crs == \
        'EPSG:32733'
    # use_sim_camera does not matter; no place map, or one without a georeference: no georeference passed on
    for extra in ({}, {'place_map': str(bare)}, {'use_sim_camera': 'false'}):
        specs = bringup.node_specs(dict(extra, photos=str(photos)))
        assert specs[0].name == 'photo_camera_node' and 'flight_sim_node' not in [s.name for s in specs]
        assert specs[0].parameters[1] == {'photos': str(photos), 'wait_for_node': 'feature_node',
                                          'use_sim_time': False}
    assert bringup.node_specs({'photos': '~/p'})[0].parameters[1]['photos'] == str(Path('~/p').expanduser())
    rec = bringup.record_command({'photos': str(photos), 'record_bag': 'true'}, stamp='x')
    assert {'/photo_camera_node/fix', '/photo_camera_node/true_pose', '/camera/camera_info',
            '/camera/image_raw'} <= set(rec) and '/flight_sim_node/true_pose' not in rec
    # a replayed flight (use_sim_time): gplq_record's receipt times on /clock too
    assert bringup.record_command({'record_bag': 'true', 'use_sim_time': 'true'}, stamp='x')[-4:] == \
        ['/diagnostics', '--ros-args', '-p', 'use_sim_time:=true']
    assert '--ros-args' not in bringup.record_command({'record_bag': 'true'}, stamp='x')
    with pytest.raises(ValueError, match='place_map=.*not found'):
        bringup.node_specs({'photos': str(photos), 'place_map': str(tmp_path / 'none.safetensors')})


def test_bringup_without_an_ament_index_reads_this_trees_config(monkeypatch):
    """gplq_up in a shell without AMENT_PREFIX_PATH (ament_index raises EnvironmentError): the
    parameter files and the DDS profile are this source tree's config/ (it used to fail)."""
    monkeypatch.delenv('AMENT_PREFIX_PATH', raising=False)
    assert bringup.config_dir() == REPO / 'config'
    assert bringup.node_specs({})[1].parameters[0] == str(REPO / 'config' / 'feature_node.yaml')


def test_launch_file_and_gplq_up_derive_from_the_bringup():
    """launch/launch_ros cannot be installed here: check the launch file's code instead. It
    must declare exactly bringup.ARGUMENTS and build its nodes only from bringup.node_specs."""
    src = (REPO / 'launch' / 'drone.launch.py').read_text()
    tree = ast.parse(src)
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {'launch', 'launch.actions', 'launch_ros.actions', 'gplq_ros.bringup'} <= imported
    attrs = {f'{n.value.id}.{n.attr}' for n in ast.walk(tree)
             if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    assert {'bringup.ARGUMENTS', 'bringup.node_specs', 'bringup.record_command', 'bringup.environment'} <= attrs
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not strings & {'feature_node', 'monitor_node', 'flight_sim_node', '/camera/image_raw'}
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {'DeclareLaunchArgument', 'Node', 'LaunchDescription'} <= calls
    # the DDS profile goes to our nodes only (additional_env), never to the whole launch
    assert 'SetEnvironmentVariable' not in src
    node_kw = {k.arg for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, 'id', '') == 'Node'
               for k in n.keywords}
    assert {'additional_env', 'namespace'} <= node_kw
    assert all(a.description for a in bringup.ARGUMENTS)
    assert {a.name for a in bringup.ARGUMENTS} >= {
        'camera_topic', 'model', 'params_file', 'use_sim_camera', 'record_bag', 'bag_dir', 'log_level'}
    from gplq_ros.bringup.processes import commands
    cmds = commands({'record_bag': 'true'}, stamp='x')
    specs = bringup.node_specs({'record_bag': 'true'})
    assert [c[0] for c in cmds] == [s.name for s in specs] + ['gplq_record']
    for (_, argv), spec in zip(cmds, specs):
        assert argv[2] == spec.module and argv[3:] == bringup.ros_argv(spec)
    # every executable the bringup names is a console script installed in lib/gplq_ros
    setup = (REPO / 'setup.py').read_text()
    for s in specs:
        assert f"'{s.executable} = {s.module}:main'" in setup


def test_config_files_are_ros_parameter_files():
    import yaml
    for node in ('feature_node', 'monitor_node', 'flight_sim_node'):
        doc = yaml.safe_load((REPO / 'config' / f'{node}.yaml').read_text())
        # keyed by /**/<node>: the file applies to the node in any namespace (one graph per vehicle)
        assert list(doc) == [f'/**/{node}'] and list(doc[f'/**/{node}']) == ['ros__parameters']


def test_fastdds_profile_variable_per_distro(monkeypatch):
    for k in bringup.PROFILE_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv('ROS_DISTRO', 'jazzy')
    env = bringup.environment()
    assert list(env) == ['FASTRTPS_DEFAULT_PROFILES_FILE'] and Path(env['FASTRTPS_DEFAULT_PROFILES_FILE']).is_file()
    assert bringup.environment({'shm_profile': 'false'}) == {}                # opted out
    monkeypatch.setenv('ROS_DISTRO', 'kilted')
    assert list(bringup.environment()) == ['FASTDDS_DEFAULT_PROFILES_FILE']
    monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', '/my/profile.xml')    # the user's own profile wins
    assert bringup.environment() == {}


def test_slot_worker_survives_exceptions_and_reports_them():
    from gplq_ros.onboard.slot import SlotWorker
    done, reported = [], []

    def handle(item):
        if item == 'bad':
            raise ValueError('broken frame')
        done.append(item)
    w = SlotWorker(handle, 'test_worker', on_error=reported.append)
    try:
        for item in ('a', 'bad', 'b'):
            w.slot.put(item)
            deadline = time.monotonic() + 5
            while w.slot.pending and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.05)
        assert done == ['a', 'b'] and w.thread.is_alive()
        assert reported == ['test_worker: ValueError: broken frame']
        assert w.health() == (1, 'test_worker: ValueError: broken frame', True)
        assert w.health()[0] == 0                                  # counted once
    finally:
        w.stop()
    assert not w.health()[2] and not w.thread.is_alive()          # health() says what the thread does


def test_status_policies():
    from gplq_ros.onboard.drift import CheckJoin
    from gplq_ros.onboard.status import MonitorLimits, feature_status, monitor_status, worker_status
    assert feature_status(5, 0, {}, '') == (Level.OK, 'running')
    assert feature_status(5, 1, {}, 'x')[0] == Level.WARN and feature_status(0, 1, {}, 'x')[0] == Level.ERROR
    assert feature_status(5, 0, {'encoding': 2}, 'bad')[0] == Level.WARN
    assert worker_status((Level.OK, 'ok'), 0, '', True) == (Level.OK, 'ok')
    assert worker_status((Level.OK, 'ok'), 2, 'w: E: m', True)[0] == Level.ERROR
    level, text = worker_status((Level.WARN, 'x'), 0, 'w: E: m', False)
    assert level == Level.ERROR and 'worker thread ended' in text and 'w: E: m' in text
    d = DriftMonitor(DriftBounds(consecutive=2))
    snap = {'latency_p95_ms': 20.0, 'drop_rate': 0.0, 'input_rate_hz': 10.0}
    assert monitor_status(d, snap, MonitorLimits(), 0, '', 0.1) == (Level.OK, 'ok')
    assert monitor_status(d, dict(snap, latency_p95_ms=300.0), MonitorLimits(), 0, '', 0.1)[0] == Level.WARN
    assert monitor_status(d, snap, MonitorLimits(), 0, '', 5.0)[0] == Level.STALE
    assert monitor_status(d, snap, MonitorLimits(), 0, '', None) == (Level.STALE, 'no feature output yet')
    d.update({'boundary_ssim': 0.1})
    d.update({'boundary_ssim': 0.1})
    assert monitor_status(d, snap, MonitorLimits(), 0, '', 5.0)[0] == Level.ERROR   # ERROR is not hidden by STALE
    # the monitor's join of a kept frame with the outputs of its stamp
    j = CheckJoin(('boundary', 'corners'), keep=2)
    assert j.output((1, 0), 'boundary', 'b') is None and not j.waiting((1, 0))   # no frame: ignored
    assert j.frame((1, 0), 'rgb1') is None and j.output((1, 0), 'boundary', 'b') is None
    assert j.output((1, 0), 'corners', 'c') == ((1, 0), 'rgb1', {'boundary': 'b', 'corners': 'c'})
    for t in (2, 3, 4):
        j.frame((t, 0), f'rgb{t}')
    assert j.skipped == 1 and not j.waiting((2, 0)) and j.waiting((4, 0))


def test_drift_bounds_are_the_monitor_defaults():
    import yaml
    doc = yaml.safe_load((REPO / 'config' / 'monitor_node.yaml').read_text())['/**/monitor_node']['ros__parameters']
    b = DriftBounds()
    assert (doc['descriptor_cosine_min'], doc['boundary_ssim_min'], doc['corner_repeatability_min'],
            doc['consecutive']) == (b.descriptor_cosine_min, b.boundary_ssim_min, b.corner_repeatability_min,
                                    b.consecutive)


def test_flow_stats_rates_latency_and_drops():
    from gplq_ros.onboard.stats import FlowStats
    f = FlowStats(window=10, rate_window_s=5.0, grace_s=1.0)
    for i in range(10):                                  # 10 Hz for 1 s, every other frame answered 50 ms later
        stamp = (100 + i // 10, (i % 10) * 100_000_000)
        assert f.input(stamp, 100 + 0.1 * i) == i + 1
        if i % 2 == 0:
            f.output(stamp, 100 + 0.1 * i + 0.05)
    s = f.snapshot(now=102.0)
    assert s['frames_in'] == 10 and s['frames_out'] == 5 and s['dropped'] == 5 and s['drop_rate'] == 0.5
    assert s['latency_p50_ms'] == pytest.approx(50.0, abs=1e-3) and s['input_rate_hz'] == pytest.approx(9 / 2.0)


def test_diagnostic_aggregator_config_matches_the_status_names():
    """config/diagnostic_aggregator.yaml expects exactly the statuses the bringup's analysed nodes
    publish (``nodes.diag``: "gplq_ros: <node name>")."""
    import yaml
    doc = yaml.safe_load((REPO / 'config' / 'diagnostic_aggregator.yaml').read_text())
    an = doc['analyzers']['ros__parameters']['gplq_perception']
    assert an['type'] == 'diagnostic_aggregator/GenericAnalyzer' and an['timeout'] > 0
    names = {f'gplq_ros: {s.name}' for s in bringup.node_specs({'use_sim_camera': 'false'})}
    assert set(an['expected']) == names
    assert all(n.startswith(tuple(an['startswith'])) for n in names)


def test_camera_info_scaled_to_the_map_grid():
    from sensor_msgs.msg import CameraInfo
    from gplq_ros.onboard.image_codec import ImageFormatError
    from gplq_ros.onboard.messages import scale_camera_info
    info = CameraInfo(width=640, height=480, distortion_model='plumb_bob', d=[0.1, 0, 0, 0, 0],
                      k=[500.0, 0.0, 320.5, 0.0, 505.0, 240.0, 0.0, 0.0, 1.0], r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
                      p=[0.0] * 12)
    k_in = list(info.k)
    out = scale_camera_info(info, (480, 640), (12, 16))
    assert list(info.k) == k_in                                                # the input is not changed
    k, p = np.reshape(out.k, (3, 3)), np.reshape(out.p, (3, 4))
    assert (out.width, out.height) == (16, 12) and np.allclose(p[:, :3], k)   # empty P: [K | 0]
    # a ray seen at camera pixel (u, v) lands on map cell coordinates ((u + .5) w / W - .5, (v + .5) h / H - .5)
    ray = np.array([0.3, -0.2, 1.0])
    u, v, _ = np.reshape(info.k, (3, 3)) @ ray
    j, i, _ = k @ ray
    assert j == pytest.approx((u + 0.5) * 16 / 640 - 0.5) and i == pytest.approx((v + 0.5) * 12 / 480 - 0.5)
    # the centre of the camera's corner pixel block of cell (0, 0) is cell (0, 0)
    j0, i0, _ = k @ np.linalg.solve(np.reshape(info.k, (3, 3)), [19.5, 19.5, 1.0])
    assert (j0, i0) == (pytest.approx(0.0), pytest.approx(0.0))
    assert list(out.d) == [0.1, 0, 0, 0, 0] and out.distortion_model == 'plumb_bob'
    for change, field in [({'width': 320}, 'camera_info.width x height'), ({'k': [0.0] * 9}, 'camera_info.k'),
                          ({'binning_x': 2}, 'camera_info.binning_x/y')]:
        bad = CameraInfo(**{**{f: getattr(info, f) for f in ('width', 'height', 'k', 'p', 'd', 'r')}, **change})
        with pytest.raises(ImageFormatError, match=field.replace('/', '.')):
            scale_camera_info(bad, (480, 640), (12, 16))
    bad = CameraInfo(width=640, height=480, k=info.k)
    bad.roi.width, bad.roi.height, bad.roi.x_offset = 320, 240, 10
    with pytest.raises(ImageFormatError, match='camera_info.roi'):
        scale_camera_info(bad, (480, 640), (12, 16))
