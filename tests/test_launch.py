"""`ros2 launch gplq_ros drone.launch.py` run for real (the command of the design card), from the
prefix `make setup` leaves in .venv (launch, launch_ros, ros2cli from ../shared/ros2), and
gplq_record with the ROS arguments launch_ros appends to every node's command line."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from helpers.ros import REPO, Harness, start, stop
from sensor_msgs.msg import Image
from std_msgs.msg import Float64MultiArray, Int32, String

from gplq_ros.bringup import description

try:
    import launch_ros.actions  # noqa: F401  (imports composition_interfaces too)
    MISSING = None
except Exception as e:  # ImportError, or a broken install: the reason is the skip message
    MISSING = (f'launch_ros cannot be imported ({type(e).__name__}: {e}); `make setup` installs launch, launch_ros '
               'and ros2cli from ../shared/ros2 when that folder exists, a ROS 2 install has them')
ROS2 = Path(sys.executable).with_name('ros2')
PREFIX = Path(sys.prefix)
if MISSING is None and not ROS2.is_file():
    MISSING = f'{ROS2}: no ros2 CLI in this venv (ros2cli); `make setup` installs it from ../shared/ros2'
needs_launch = pytest.mark.skipif(MISSING is not None, reason=MISSING or '')


def bag_counts(bag: Path) -> dict:
    """{topic: messages} of a rosbag2 bag (rosbags, no rclpy)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        counts = {c.topic: 0 for c in reader.connections}
        for conn, _, _ in reader.messages():
            counts[conn.topic] += 1
    return counts


def children(pid: int) -> set:
    out = subprocess.run(['pgrep', '-P', str(pid)], capture_output=True, text=True).stdout.split()
    return {int(p) for p in out}


def running(pids) -> dict:
    """{pid: command line} of the processes still running (zombies are not)."""
    alive = {}
    for p in pids:
        try:
            if open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0] != 'Z':
                alive[p] = open(f'/proc/{p}/cmdline').read().replace('\0', ' ')[:200]
        except OSError:
            pass
    return alive


def params_file(path, **sections):
    import yaml
    path.write_text(yaml.safe_dump({f'/**/{n}': {'ros__parameters': p} for n, p in sections.items()}))
    return path


def test_gplq_record_takes_the_ros_arguments_launch_ros_appends(tmp_path):
    """launch_ros (and ros2 run) append ``--ros-args -r __ns:=... -r __node:=...`` to an executable's command
    line: gplq_record runs as /uav1/rec, a relative --topics name is in its namespace, a remapping applies,
    and it records (it used to exit with "unrecognized arguments: --ros-args")."""
    bag = tmp_path / 'bag'
    rec = start([sys.executable, '-m', 'gplq_ros.tools.record', '--out', str(bag), '--topics', 'chatter',
                 '/uav1/count', 'renamed', '--ros-args', '-r', '__ns:=/uav1', '-r', '__node:=rec',
                 '-r', 'renamed:=/elsewhere/counted', '--log-level', 'warn'], tmp_path / 'rec.log')
    h = Harness('test_record_ros_args')
    try:
        pubs = {'chatter': h.node.create_publisher(String, '/uav1/chatter', 10),
                'count': h.node.create_publisher(Int32, '/uav1/count', 10),
                'renamed': h.node.create_publisher(Int32, '/elsewhere/counted', 10)}
        subscribed = h.spin(60, lambda: rec.poll() is not None or
                            all(p.get_subscription_count() for p in pubs.values()))
        names = h.node.get_node_names_and_namespaces()
        for i in range(10):
            pubs['chatter'].publish(String(data=f'hello {i}'))
            pubs['count'].publish(Int32(data=i))
            pubs['renamed'].publish(Int32(data=-i))
            h.spin(0.05)
        h.spin(1.0)
        alive = rec.poll() is None
    finally:
        h.close()
        rc = stop(rec)
    log = (tmp_path / 'rec.log').read_text(errors='replace')
    assert alive and subscribed, log[-2000:]
    assert rc == 0, log[-2000:]
    assert ('rec', '/uav1') in names, names
    assert bag_counts(bag) == {'/uav1/chatter': 10, '/uav1/count': 10, '/elsewhere/counted': 10}, log[-2000:]


def test_gplq_record_names_a_malformed_ros_argument(tmp_path):
    res = subprocess.run([sys.executable, '-m', 'gplq_ros.tools.record', '--out', str(tmp_path / 'bag'),
                          '--topics', 'a', '--ros-args', '-r', 'no_rule'], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert res.returncode == 2 and "gplq_record: error: ROS arguments ['--ros-args', '-r', 'no_rule']" in res.stderr, \
        res.stderr[-2000:]
    res = subprocess.run([sys.executable, '-m', 'gplq_ros.tools.record', '--out', str(tmp_path / 'bag2'),
                          '--topics', 'not a topic'], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert res.returncode == 2 and "--topics 'not a topic': not a ROS topic name" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / 'bag2').exists()


def installed_share_is_this_tree():
    """The launch file and configs ros2 launch reads are .venv/share/gplq_ros's (what `make setup` installed);
    the nodes run this tree's code (PYTHONPATH): both must be the same."""
    share = PREFIX / 'share' / description.PACKAGE
    files = ['package.xml', 'launch/drone.launch.py'] + [   # setup.py's data_files
        f'config/{c.name}' for c in (REPO / 'config').iterdir() if c.suffix in ('.yaml', '.xml')]
    stale = [p for p in files if not (share / p).is_file() or (share / p).read_bytes() != (REPO / p).read_bytes()]
    assert not stale, f'{share}: {stale} missing or not this tree\'s: run `make setup`'
    lib = PREFIX / 'lib' / description.PACKAGE
    assert all(os.access(lib / e, os.X_OK) for e in ('flight_sim_node', 'feature_node', 'monitor_node',
                                                     'localizer_node', 'gplq_record')), \
        f'{lib}: the executables ros2 launch starts are missing: run `make setup`'


def launch(tmp_path, name, *arguments):
    return start([str(ROS2), 'launch', description.PACKAGE, 'drone.launch.py', *arguments],
                 tmp_path / f'{name}.log')


def died(proc, log: Path) -> bool:
    """ros2 launch ended, or one of its nodes did (launch goes on without it)."""
    return proc.poll() is not None or 'process has died' in log.read_text(errors='replace')


def stop_launch(proc, pids, tmp_path, name):
    """SIGINT to ros2 launch (as Ctrl-C): it stops its nodes; none may be left running."""
    pids |= children(proc.pid)
    rc = stop(proc, timeout=40)
    time.sleep(0.5)
    left = running(pids)
    for p in left:             # do not leave them to the next tests
        os.kill(p, signal.SIGKILL)
    log = (tmp_path / f'{name}.log').read_text(errors='replace')
    assert not left, (left, log[-3000:])
    assert rc == 0, log[-3000:]
    return log


@needs_launch
def test_ros2_launch_records_the_flight(tmp_path, packed_graph, fp32_graph, vocab_file, place_map):
    """ros2 launch gplq_ros drone.launch.py record_bag:=true place_map:=... with the simulated camera: the five
    processes start from .venv/lib/gplq_ros, the bag has the camera frames, every feature-node output (with
    the frames' stamps), the monitor's status, the localizer's poses and fixes, the true poses and the
    diagnostics of the feature node, the monitor and the localizer; Ctrl-C stops them all."""
    installed_share_is_this_tree()
    params = params_file(tmp_path / 'params.yaml', **{n: {'vocabulary': str(vocab_file)} for n in
                                                      ('feature_node', 'monitor_node', 'localizer_node')})
    bags = tmp_path / 'bags'
    args = {'model': str(packed_graph), 'reference_model': str(fp32_graph), 'params_file': str(params),
            'place_map': str(place_map), 'record_bag': 'true', 'bag_dir': str(bags)}
    t0 = time.monotonic()
    proc = launch(tmp_path, 'launch', *(f'{k}:={v}' for k, v in args.items()))
    from geometry_msgs.msg import PoseWithCovarianceStamped
    h = Harness('test_launch')
    poses = h.collect(PoseWithCovarianceStamped, '/localizer_node/pose')
    status = h.collect(Float64MultiArray, '/monitor_node/status')
    pids = set()

    def flying():
        pids.update(children(proc.pid))
        return died(proc, tmp_path / 'launch.log') or (len(poses) >= 10 and len(status) >= 2)
    try:
        h.spin(150, flying)
        h.spin(1.0)
        names = set(h.node.get_node_names_and_namespaces())
        started_s = time.monotonic() - t0
    finally:
        h.close()
        log = stop_launch(proc, pids, tmp_path, 'launch')
    assert len(poses) >= 10 and status, (len(poses), len(status), log[-3000:])
    assert {(n, '/') for n in ('flight_sim_node', 'feature_node', 'monitor_node', 'localizer_node',
                               'gplq_record')} <= names, names
    assert len(pids) == 5, (pids, log[-3000:])         # one process per node, started by ros2 launch itself
    bag = next(bags.iterdir())
    counts = bag_counts(bag)
    wanted = {t for t in description.record_topics(args) if not t.endswith('/camera_info')}   # no CameraInfo in sim
    assert wanted <= set(counts) and all(counts[t] > 0 for t in wanted), (counts, log[-3000:])
    from gplq_ros.bringup.bag_report import evaluate
    s, _ = evaluate(bag, frames=0)
    assert s['topics']['camera'] == '/camera/image_raw' and s['frames_in'] >= 20, s
    assert s['matched'] >= 10 and s['outputs_without_input'] == 0, s
    assert {f'gplq_ros: {n}' for n in ('feature_node', 'monitor_node', 'localizer_node')} <= \
        set(s['diagnostics_levels']), s['diagnostics_levels']
    loc = s['localization']
    assert loc['fixes'] >= 10 and loc['error_p50_m'] < 10, loc
    print(f'ros2 launch: {started_s:.1f} s to 10 poses; bag {counts}')
    shutil.rmtree(bags)        # ~9 MB/s of camera frames


@needs_launch
def test_ros2_launch_in_a_namespace_records_the_namespaced_topics(tmp_path, packed_graph, fp32_graph, vocab_file):
    """namespace:=uav1: every node (gplq_record too) is in /uav1, the bag holds the /uav1 topics and
    /diagnostics, nothing of the root namespace."""
    installed_share_is_this_tree()
    params = params_file(tmp_path / 'params.yaml', **{n: {'vocabulary': str(vocab_file)} for n in
                                                      ('feature_node', 'monitor_node')})
    bags = tmp_path / 'bags'
    args = {'namespace': 'uav1', 'model': str(packed_graph), 'reference_model': str(fp32_graph),
            'params_file': str(params), 'record_bag': 'true', 'bag_dir': str(bags)}
    proc = launch(tmp_path, 'launch_uav1', *(f'{k}:={v}' for k, v in args.items()))
    h = Harness('test_launch_uav1')
    outs = h.collect(Image, '/uav1/feature_node/boundary_map')
    status = h.collect(Float64MultiArray, '/uav1/monitor_node/status')
    diags = h.collect(DiagnosticArray, '/diagnostics')
    pids = set()

    def flying():
        pids.update(children(proc.pid))
        return died(proc, tmp_path / 'launch_uav1.log') or (len(outs) >= 5 and status)
    try:
        h.spin(120, flying)
        h.spin(1.0)
        names = set(h.node.get_node_names_and_namespaces())
    finally:
        h.close()
        log = stop_launch(proc, pids, tmp_path, 'launch_uav1')
    assert len(outs) >= 5 and status, (len(outs), len(status), log[-3000:])
    assert {(n, '/uav1') for n in ('flight_sim_node', 'feature_node', 'monitor_node', 'gplq_record')} <= names, \
        names
    assert len(pids) == 4, (pids, log[-3000:])
    counts = bag_counts(next(bags.iterdir()))
    wanted = {t for t in description.record_topics(args) if not t.endswith('/camera_info')}
    assert {t for t in wanted if t.startswith('/uav1/')} == {
        '/uav1/camera/image_raw', '/uav1/feature_node/boundary_map', '/uav1/feature_node/corner_map',
        '/uav1/feature_node/corners', '/uav1/feature_node/descriptor', '/uav1/feature_node/verify_image',
        '/uav1/monitor_node/status',
        '/uav1/flight_sim_node/true_pose'}, wanted
    assert wanted <= set(counts) and all(counts[t] > 0 for t in wanted), (counts, log[-3000:])
    assert all(t.startswith('/uav1/') or t == '/diagnostics' for t in counts), counts
    assert {s.name for d in diags for s in d.status if s.name.startswith('gplq_ros: ')} >= \
        {'gplq_ros: uav1/feature_node', 'gplq_ros: uav1/monitor_node'}
    shutil.rmtree(bags)


def test_path_arguments_expand_the_home_directory():
    """`ros2 launch gplq_ros drone.launch.py model:=~/w4a8.onnx`: bash leaves the ~ of name:=~/... as it is
    (it is not an assignment), so the bringup expands it in every path argument."""
    home = os.path.expanduser('~')
    args = {'model': '~/m.onnx', 'reference_model': '~/r.onnx', 'params_file': '~/p.yaml', 'place_map': '~/pm',
            'record_bag': 'true', 'bag_dir': '~/bags'}
    specs = {s.name: s for s in description.node_specs(args)}
    assert all(s.parameters[0] == f'{home}/p.yaml' for s in specs.values())
    assert specs['feature_node'].parameters[1]['model'] == f'{home}/m.onnx'
    assert specs['monitor_node'].parameters[1]['reference_model'] == f'{home}/r.onnx'
    assert specs['localizer_node'].parameters[1]['map'] == f'{home}/pm'
    assert description.record_command(args, stamp='x')[:2] == ['--out', f'{home}/bags/gplq_x']


PHOTOS = Path(os.environ.get('GPLQ_BRIGHTON_BEACH', REPO.parent / 'shared' / 'datasets' / 'brighton_beach')) / 'images'


@needs_launch
@pytest.mark.skipif(not PHOTOS.is_dir(), reason=f'real DJI photos not here: {PHOTOS} is absent (brighton_beach '
                    'dataset, ../shared/datasets)')
def test_ros2_launch_plays_photos_instead_of_the_simulated_flight(tmp_path, fp32_graph, vocab_file):
    """photos:=DIR (4 real 4000x2250 DJI photos at 1 Hz): photo_camera_node, not flight_sim_node, is the camera on
    camera_topic and its camera_info; the feature node processes every photo; the bag holds the frames, the
    outputs, the photos' GNSS on photo_camera_node/fix and (georeference from the params file here) their pose
    in map on photo_camera_node/true_pose."""
    from sensor_msgs.msg import CameraInfo

    from gplq_ros.onboard.geo import utm_zone_of, wgs84_to_utm
    from gplq_ros.onboard.photos import read_photo
    installed_share_is_this_tree()
    photos = tmp_path / 'photos'
    photos.mkdir()
    for p in sorted(PHOTOS.glob('*.JPG'))[:4]:
        (photos / p.name).symlink_to(p)
    first = read_photo(sorted(photos.iterdir())[0])
    zone, north = utm_zone_of(first.lat, first.lon)
    e, n = wgs84_to_utm(first.lat, first.lon, zone, north)
    # the map origin (top-left corner) 100 m west and north of the first photo, as a place map's georeference
    params = params_file(tmp_path / 'params.yaml', feature_node={'vocabulary': str(vocab_file)},
                         monitor_node={'vocabulary': str(vocab_file)},
                         # 1 Hz: the feature node keeps the newest frame while busy (SlotWorker), and a
                         # 4000x2250 photo plus the reference graph took longer than 0.5 s under a full suite
                         photo_camera_node={'rate_hz': 1.0, 'utm_zone': f'{zone}{"N" if north else "S"}',
                                            'utm_origin_e': e - 100.0, 'utm_origin_n': n + 100.0})
    bags = tmp_path / 'bags'
    args = {'photos': str(photos), 'camera_topic': '/drone/cam/image', 'model': str(fp32_graph),
            'reference_model': str(fp32_graph), 'params_file': str(params), 'record_bag': 'true',
            'bag_dir': str(bags)}
    # subscribed before the launch: 4 photos at 1 Hz are over in 4 s, a late subscriber misses the first ones
    h = Harness('test_launch_photos')
    outs = h.collect(Image, '/feature_node/boundary_map')
    infos = h.collect(CameraInfo, '/drone/cam/camera_info', reliable=False)
    proc = launch(tmp_path, 'launch_photos', *(f'{k}:={v}' for k, v in args.items()))
    pids = set()

    def flying():
        pids.update(children(proc.pid))
        return died(proc, tmp_path / 'launch_photos.log') or len(outs) >= 4
    try:
        h.spin(150, flying)
        h.spin(1.5)
        names = set(h.node.get_node_names_and_namespaces())
    finally:
        h.close()
        log = stop_launch(proc, pids, tmp_path, 'launch_photos')
    assert len(outs) == 4, (len(outs), log[-3000:])
    assert {(nm, '/') for nm in ('photo_camera_node', 'feature_node', 'monitor_node', 'gplq_record')} <= names and \
        ('flight_sim_node', '/') not in names, names
    assert infos and (infos[0].width, infos[0].height) == (640, 360), infos[:1]
    bag = next(bags.iterdir())
    counts = bag_counts(bag)
    assert {'/drone/cam/image': 4, '/drone/cam/camera_info': 4, '/photo_camera_node/fix': 4,
            '/photo_camera_node/true_pose': 4, '/feature_node/boundary_map': 4}.items() <= counts.items(), \
        (counts, log[-3000:])
    assert set(counts) <= set(description.record_topics(args)), counts
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        got = {c.topic: [] for c in reader.connections}
        for conn, _, raw in reader.messages([c for c in reader.connections if c.topic.startswith('/photo')]):
            got[conn.topic].append(reader.deserialize(raw, conn.msgtype))
    fix, pose = got['/photo_camera_node/fix'][0], got['/photo_camera_node/true_pose'][0]
    assert (fix.latitude, fix.longitude) == (first.lat, first.lon)
    assert (pose.pose.position.x, pose.pose.position.y) == pytest.approx((100.0, -100.0), abs=1e-6)
    assert pose.header.stamp == fix.header.stamp and pose.header.frame_id == 'map'
    from gplq_ros.bringup.bag_report import evaluate
    s, _ = evaluate(bag, frames=0)
    assert (s['frames_in'], s['matched'], s['outputs_without_input']) == (4, 4, 0), s
    shutil.rmtree(bags)
