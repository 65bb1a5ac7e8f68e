"""Workers that live as long as their node is configured, the localizer node as wiring only,
and one home per setting.

Pure logic first (no rclpy): SlotWorker, StampJoin, localizer_status, the settings against
the parameter files. Then the nodes in this process with a real rclpy context, executor and
lifecycle_msgs service client: the real engine / localizer wrapped so that a frame is held
inside it while the test deactivates the node."""
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gplq_ros.onboard.slot import SlotWorker
from gplq_ros.onboard.status import Level, worker_status

REPO = Path(__file__).resolve().parents[1]


def wait(cond, seconds=5.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# -- SlotWorker --------------------------------------------------------------------------------------------------
def test_a_skipped_item_never_ends_the_worker_only_stop_does():
    """handle() returning False (today's "deactivated meanwhile") is a skipped item: the worker takes
    the next ones, health() says alive because the thread is; after stop() it says not alive."""
    done = []

    def handle(item):
        done.append(item)
        return False if item == 'skip' else None
    w = SlotWorker(handle, 'test_skip')
    try:
        for item in ('a', 'skip', 'b', 'skip', 'c'):
            w.slot.put(item)
            assert wait(lambda: done and done[-1] == item), (item, done)
        assert done == ['a', 'skip', 'b', 'skip', 'c']
        assert w.thread.is_alive() and w.health() == (0, '', True)
    finally:
        w.stop()
    assert not w.thread.is_alive() and w.health()[2] is False


def test_a_worker_that_ends_without_stop_is_error_with_its_cause():
    """A BaseException out of handle() (SystemExit) ends the thread: health() says so and keeps the
    cause; worker_status makes the node's status ERROR naming it."""
    def handle(item):
        if item == 'exit':
            raise SystemExit('handler called sys.exit')
    w = SlotWorker(handle, 'test_exit')
    try:
        w.slot.put('ok')
        assert wait(lambda: not w.slot.pending)
        w.slot.put('exit')
        assert wait(lambda: not w.thread.is_alive())
        new, last, alive = w.health()
        assert not alive and new == 0 and 'SystemExit' in last and 'sys.exit' in last, last
        level, text = worker_status((Level.OK, 'running'), new, last, alive)
        assert level == Level.ERROR and 'worker thread ended' in text and 'SystemExit' in text, text
    finally:
        w.stop()


def test_latest_slot_discard_counts_a_drop():
    w = SlotWorker(lambda item: time.sleep(0.3), 'test_discard')
    try:
        w.slot.put(1)
        assert wait(lambda: not w.slot.pending)      # 1 is being handled
        w.slot.put(2)
        assert w.slot.discard() is True and w.slot.pending == 0 and w.slot.dropped == 1
        assert w.slot.discard() is False and w.slot.dropped == 1
    finally:
        w.stop()


# -- StampJoin, localizer_status ---------------------------------------------------------------------------------
def test_stamp_join_is_bounded_counted_and_configurable():
    from gplq_ros.onboard.join import JoinConfig, StampJoin
    j = StampJoin(('descriptor', 'boundary'), JoinConfig(pending_stamps=3))
    assert j.add((1, 0), 'boundary', 'b1') is None and j.pending == 1
    assert j.add((1, 0), 'descriptor', 'd1') == {'boundary': 'b1', 'descriptor': 'd1'} and j.pending == 0
    for t in range(2, 8):                          # descriptors whose boundary map never comes
        assert j.add((t, 0), 'descriptor', f'd{t}') is None
    assert j.pending == 3 and j.unpaired == 3      # the three oldest dropped, counted
    # (2, 0) was dropped: its late partner waits alone, and pushes out the oldest, (5, 0)
    assert j.add((2, 0), 'boundary', 'late') is None and j.unpaired == 4 and j.pending == 3
    assert j.add((7, 0), 'boundary', 'b7') == {'descriptor': 'd7', 'boundary': 'b7'}
    assert j.clear() == 2 and j.pending == 0 and j.unpaired == 6 and j.joined == 2
    only = StampJoin(('descriptor',))
    assert only.add((1, 0), 'descriptor', 'd') == {'descriptor': 'd'} and JoinConfig().pending_stamps == 10
    with pytest.raises(ValueError, match='pending_stamps=0'):
        JoinConfig(pending_stamps=0)
    with pytest.raises(ValueError, match='corners'):
        j.add((1, 0), 'corners', 'c')


def test_localizer_status_policy():
    from gplq_ros.onboard.status import localizer_status
    assert localizer_status(None, None, 2.0) == (Level.WARN, 'no descriptor yet')
    assert localizer_status('', 0.1, 2.0) == (Level.OK, 'fix')
    assert localizer_status('gate', 0.1, 2.0) == (Level.WARN, 'no fix: gate')
    assert localizer_status(None, 0.1, 2.0) == (Level.WARN, 'no fix: no descriptor yet')
    assert localizer_status('', 3.5, 2.0) == (Level.WARN, 'no descriptor for 3.5 s')
    assert localizer_status('', 0.1, 2.0, malformed='length 5') == (Level.ERROR, 'malformed descriptor: length 5')
    level, text = localizer_status('', 0.1, 2.0, filter_fault='LinAlgError: Singular matrix')
    assert level == Level.ERROR and text == 'filter fault: LinAlgError: Singular matrix'


# -- one home per setting ----------------------------------------------------------------------------------------
def _node_settings():
    from gplq_ros.onboard.aiding import AidingConfig
    from gplq_ros.onboard.drift import DriftBounds
    from gplq_ros.onboard.join import JoinConfig
    from gplq_ros.onboard.localize import LocalizerConfig
    from gplq_ros.onboard.status import MonitorLimits
    from gplq_ros.onboard.verify import VerifyConfig
    return [('localizer_node', LocalizerConfig), ('localizer_node', JoinConfig), ('localizer_node', AidingConfig),
            ('localizer_node', VerifyConfig),
            ('monitor_node', DriftBounds), ('monitor_node', MonitorLimits)]


def test_settings_are_the_parameter_files():
    """config/<node>.yaml has every setting of the library configs the node declares, with the
    setting's default, and its comment states the setting's range (no second copy that can drift)."""
    import yaml

    from gplq_ros.onboard.settings import settings_of
    for node, cls in _node_settings():
        path = REPO / 'config' / f'{node}.yaml'
        doc = yaml.safe_load(path.read_text())[f'/**/{node}']['ros__parameters']
        lines, name = {}, None             # parameter -> its comment, with the comment-only lines under it
        for line in path.read_text().splitlines():
            m = re.match(r'^\s+(\w+):[^#]*#?(.*)$', line)
            if m:
                name, lines[m.group(1)] = m.group(1), m.group(2)
            elif name and line.strip().startswith('#'):
                lines[name] += ' ' + line.strip()
        found = list(settings_of(cls))
        assert found, cls
        for s in found:
            assert s.name in doc and doc[s.name] == s.default, (node, s.name, doc.get(s.name), s.default)
            if s.range is not None:
                ranges = re.findall(r'\[([-+\d.e]+), ([-+\d.e^]+)\]', lines[s.name])
                assert ranges, (node, s.name, lines[s.name])
                lo, hi = (float(v.replace('2^31-1', str(2 ** 31 - 1))) for v in ranges[-1])
                assert (lo, hi) == (float(s.range[0]), float(s.range[1])), (node, s.name, ranges[-1], s.range)


def test_localizer_config_ranges_are_the_nodes():
    """The ranges LocalizerConfig enforced disagreed with the node's parameter ranges; now one:
    the node's (cluster_radius_m >= 0.1, search_radius_m >= 0.5, min_margin <= 1.99)."""
    from gplq_ros.onboard.localize import LocalizerConfig
    for field, bad, good in [('cluster_radius_m', 0.05, 0.1), ('search_radius_m', 0.3, 0.5),
                             ('min_margin', 1.995, 1.99)]:
        with pytest.raises(ValueError, match=f'LocalizerConfig.{field}={bad}'):
            LocalizerConfig(**{field: bad})
        assert getattr(LocalizerConfig(**{field: good}), field) == good


def test_nodes_declare_their_parameters_from_the_settings():
    """Every setting is a parameter of the same name, default, description, range and read-only
    flag; the drift bounds and monitor limits stay writable; the old name ``period`` is refused."""
    import rclpy
    from rclpy.parameter import Parameter

    from gplq_ros.nodes.localizer_node import LocalizerNode
    from gplq_ros.nodes.monitor_node import MonitorNode
    from gplq_ros.onboard.settings import settings_of
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        for node_name, cls in _node_settings():
            node = {'localizer_node': LocalizerNode, 'monitor_node': MonitorNode}[node_name](context=ctx)
            try:
                for s in settings_of(cls):
                    d = node.describe_parameter(s.name)
                    assert node.get_parameter(s.name).value == s.default and d.description == s.help, s.name
                    assert d.read_only == s.read_only, s.name
                    r = (d.floating_point_range or d.integer_range)
                    assert ((r[0].from_value, r[0].to_value) if r else None) == s.range, s.name
                assert node.describe_parameter('diagnostics_period').read_only
            finally:
                node.destroy_node()
        for node_cls in (LocalizerNode, MonitorNode):
            with pytest.raises(ValueError, match='parameter period was renamed diagnostics_period'):
                node_cls(context=ctx, parameter_overrides=[Parameter('period', value=0.5)])
    finally:
        rclpy.shutdown(context=ctx)


# -- the nodes in this process ------------------------------------------------------------------------------------
class Held:
    """The real engine / localizer, but a call made while ``hold`` is set waits (after the real
    work) until ``release`` is set or ``limit`` seconds passed: a frame stays inside it."""

    def __init__(self, real, method=None, limit=20.0):
        self.real, self.method, self.limit = real, method, limit
        self.hold, self.entered, self.release = False, threading.Event(), threading.Event()
        self.calls = 0        # calls returned

    def _held(self, fn, *a, **kw):
        out = fn(*a, **kw)
        if self.hold:
            self.hold = False
            self.entered.set()
            self.release.wait(self.limit)
        self.calls += 1
        return out

    def __call__(self, *a, **kw):
        return self._held(self.real, *a, **kw)

    def update(self, *a, **kw):
        return self._held(self.real.update, *a, **kw)

    def __getattr__(self, name):
        return getattr(self.real, name)


class InProcess:
    """A managed node in this process (autostart off) with a client node, one real context and
    executor; transitions through the node's lifecycle_msgs ~/change_state service."""

    def __init__(self, node_cls, params: dict, remap=()):
        import rclpy
        from lifecycle_msgs.srv import ChangeState
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        args = ['--ros-args'] + [a for r in remap for a in ('-r', r)]
        self.node = node_cls(context=self.ctx, cli_args=args, parameter_overrides=[
            Parameter(k, value=v) for k, v in dict(params, autostart=False).items()])
        self.client = rclpy.create_node(f'test_{node_cls.NODE_NAME}_client', context=self.ctx)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self.ex.add_node(self.client)
        self.change = self.client.create_client(ChangeState, f'/{node_cls.NODE_NAME}/change_state')
        assert self.spin(30, self.change.service_is_ready)

    def spin(self, seconds, until=None) -> bool:
        from helpers.ros import spin_until
        return spin_until(self.ex, seconds, until, step=0.02)

    def transition(self, name: str) -> None:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        tid = getattr(Transition, f'TRANSITION_{name.upper()}')
        fut = self.change.call_async(ChangeState.Request(transition=Transition(id=tid)))
        assert self.spin(60, fut.done) and fut.result().success, name

    def collect(self, msg_type, topic: str) -> list:
        from rclpy.qos import QoSProfile
        got = []
        self.client.create_subscription(msg_type, topic, got.append, QoSProfile(depth=50))
        return got

    def publisher(self, msg_type, topic: str):
        return self.client.create_publisher(msg_type, topic, 10)

    def close(self) -> None:
        import rclpy
        self.node.destroy_node()
        self.client.destroy_node()
        rclpy.shutdown(context=self.ctx)


def _frames(images, n):
    src = images['2019_YELL_2_541000_4977000_image_crop.png']
    return [np.ascontiguousarray(src[40 * i:40 * i + 480, 60 * i:60 * i + 640]) for i in range(n)]


def _image(node, rgb):
    from gplq_ros.onboard.image_codec import numpy_to_image
    msg = numpy_to_image(rgb, 'rgb8')
    msg.header.frame_id = 'camera_optical_frame'
    msg.header.stamp = node.get_clock().now().to_msg()
    return msg


def _key(msg):
    return (msg.header.stamp.sec, msg.header.stamp.nanosec)


def _ours(diags, name):
    return [{kv.key: kv.value for kv in s.values} for d in diags for s in d.status if s.name == f'gplq_ros: {name}']


def test_feature_node_deactivated_while_a_frame_is_in_the_engine_resumes_after_activate(fp32_graph, images):
    """configure -> activate -> a frame held inside the (real) engine -> deactivate -> the frame
    leaves the engine (no outputs: inactive) -> activate: the same inference thread processes the
    next frames, /diagnostics reports it alive."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from gplq_ros.nodes.feature_node import FeatureNode
    p = InProcess(FeatureNode, {'model': str(fp32_graph), 'vocabulary': 'none', 'diagnostics_period': 0.2,
                                'threads': 1}, remap=['image:=/wk_feat/image'])
    try:
        p.transition('configure')
        engine = p.node.engine = Held(p.node.engine)
        thread = p.node.worker.thread
        out = p.collect(Image, '/feature_node/boundary_map')
        diags = p.collect(DiagnosticArray, '/diagnostics')
        cam = p.publisher(Image, '/wk_feat/image')
        p.transition('activate')
        assert p.spin(30, lambda: cam.get_subscription_count() >= 1)
        frames, sent = _frames(images, 4), []

        def feed(t):
            sent.append(_image(p.node, frames[t]))
            cam.publish(sent[-1])
        feed(0)
        assert p.spin(30, lambda: len(out) == 1)                     # active: an output
        engine.hold = True
        feed(1)
        assert p.spin(30, engine.entered.is_set)                     # frame 1 is inside the engine
        p.transition('deactivate')
        engine.release.set()
        assert p.spin(10, lambda: engine.calls == 2)                 # it left the engine: no outputs
        p.spin(0.5)
        assert len(out) == 1 and thread.is_alive()
        p.transition('activate')
        assert p.spin(30, lambda: cam.get_subscription_count() >= 1)
        for t in (2, 3):
            feed(t)
            assert p.spin(30, lambda: len(out) == t), (t, len(out), p.node.worker.health())
        p.spin(0.5)
        assert [_key(m) for m in out] == [_key(sent[t]) for t in (0, 2, 3)]
        assert p.node.worker.thread is thread and thread.is_alive() and p.node.processed == 3
        last = _ours(diags, 'feature_node')[-1]
        assert last['worker_alive'] == 'True' and last['lifecycle_state'] == 'active', last
        assert last['frames_skipped'] == '1' and last['frames_processed'] == '3', last
    finally:
        p.close()


def test_monitor_deactivated_while_a_check_is_in_the_reference_resumes_after_activate(fp32_graph, images):
    """The monitor's reference thread likewise: a check held inside the (real) FP32 reference while the
    node is deactivated is not counted; after activate the same thread checks the next frames."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image, PointCloud2
    from std_msgs.msg import Float64MultiArray

    from gplq_ros.nodes.monitor_node import MonitorNode
    from gplq_ros.onboard.engine import load
    from gplq_ros.onboard.messages import decode_status, encode_corners, encode_map
    frames = _frames(images, 3)
    engine = load(Path(fp32_graph), threads=1)
    outs = [engine(f) for f in frames]                               # the feature node's outputs (same graph)
    p = InProcess(MonitorNode, {'reference_model': str(fp32_graph), 'vocabulary': 'none', 'check_every_n': 1,
                                'diagnostics_period': 0.2},
                  remap=['image:=/wk_mon/image', 'boundary_map:=/wk_mon/boundary_map', 'corners:=/wk_mon/corners'])
    try:
        p.transition('configure')
        ref = p.node.reference = Held(p.node.reference)
        thread = p.node.worker.thread
        status = p.collect(Float64MultiArray, '/monitor_node/status')
        diags = p.collect(DiagnosticArray, '/diagnostics')
        cam, bmap = p.publisher(Image, '/wk_mon/image'), p.publisher(Image, '/wk_mon/boundary_map')
        corners = p.publisher(PointCloud2, '/wk_mon/corners')
        p.transition('activate')

        def feed(t):
            msg = _image(p.node, frames[t])
            cam.publish(msg)
            assert p.spin(10, lambda: p.node.join.waiting(_key(msg)))
            bmap.publish(encode_map(outs[t].boundary, msg.header))
            corners.publish(encode_corners(outs[t].corners_px, outs[t].corners.response, msg.header))
        assert p.spin(30, lambda: min(x.get_subscription_count() for x in (cam, bmap, corners)) >= 1)
        feed(0)
        assert p.spin(60, lambda: p.node.drift.checks == 1)
        ref.hold = True
        feed(1)
        assert p.spin(60, ref.entered.is_set)                        # check 1 is inside the reference
        p.transition('deactivate')
        ref.release.set()
        assert p.spin(10, lambda: ref.calls == 2)
        p.spin(0.5)
        assert p.node.drift.checks == 1 and p.node.join.skipped == 1 and thread.is_alive()
        p.transition('activate')
        assert p.spin(30, lambda: min(x.get_subscription_count() for x in (cam, bmap, corners)) >= 1)
        feed(2)
        assert p.spin(60, lambda: p.node.drift.checks == 2), p.node.worker.health()
        assert p.spin(5, lambda: status and decode_status(status[-1])['checks'] == 2)
        assert p.node.worker.thread is thread and thread.is_alive()
        assert p.node.drift.level == Level.OK and p.node.drift.last['boundary_ssim'] > 0.99   # same graph
        last = _ours(diags, 'monitor_node')[-1]
        assert last['worker_alive'] == 'True' and last['checks_skipped'] == '1', last
    finally:
        p.close()


def _camera_info(d, model='plumb_bob'):
    from sensor_msgs.msg import CameraInfo
    k = [450.0, 0.0, 319.5, 0.0, 450.0, 239.5, 0.0, 0.0, 1.0]
    return CameraInfo(width=640, height=480, distortion_model=model, d=list(d), k=k,
                      r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], p=k[:3] + [0.0] + k[3:6] + [0.0] + k[6:] + [0.0])


BARREL = [-0.2, 0.05, 0.0, 0.0, 0.0]


def test_feature_node_undistorts_with_the_cameras_camera_info(fp32_graph, images):
    """A camera_info with distortion switches undistortion on (diagnostics ``undistortion``, the
    same frame gives another boundary map, ~/camera_info with D = 0); an unknown model with
    non-zero D is refused: the frame is processed as it is, counted, WARN, its ~/camera_info keeps
    the camera's D; ``undistort`` false turns it off."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CameraInfo, Image

    from gplq_ros.nodes.feature_node import FeatureNode
    from gplq_ros.onboard.messages import decode_map
    p = InProcess(FeatureNode, {'model': str(fp32_graph), 'vocabulary': 'none', 'diagnostics_period': 0.1,
                                'threads': 1}, remap=['image:=/wk_und/image', 'camera_info:=/wk_und/camera_info'])
    try:
        p.transition('configure')
        out = p.collect(Image, '/feature_node/boundary_map')
        infos = p.collect(CameraInfo, '/feature_node/camera_info')
        diags = p.collect(DiagnosticArray, '/diagnostics')
        cam, cam_info = p.publisher(Image, '/wk_und/image'), p.publisher(CameraInfo, '/wk_und/camera_info')
        p.transition('activate')
        assert p.spin(30, lambda: min(x.get_subscription_count() for x in (cam, cam_info)) >= 1)
        frame = _frames(images, 1)[0]
        seen = {}

        def step(name, info=None):
            if info is not None:
                cam_info.publish(info)
                assert p.spin(10, lambda: p.node.camera_info is not None and
                              p.node.camera_info.distortion_model == info.distortion_model)
            n = len(out)
            cam.publish(_image(p.node, frame))
            assert p.spin(30, lambda: len(out) == n + 1), name
            n_diag = len(diags)
            assert p.spin(5, lambda: len(diags) > n_diag)
            seen[name] = (decode_map(out[-1]), _ours(diags, 'feature_node')[-1],
                          [d.status[0].level for d in diags][-1], infos[-1] if info is not None else None)
        step('none')
        step('barrel', _camera_info(BARREL))
        step('unknown', _camera_info(BARREL, 'my_lens'))
        p.node.set_parameters([Parameter('undistort', value=False)])
        step('off', _camera_info(BARREL))
    finally:
        p.close()
    none, barrel, unknown, off = (seen[k] for k in ('none', 'barrel', 'unknown', 'off'))
    assert none[1]['undistortion'] == 'no camera_info' and none[2] == bytes([0])
    assert barrel[1]['undistortion'] == 'on (plumb_bob)' and barrel[1]['frames_undistorted'] == '1'
    assert barrel[2] == bytes([0]), barrel[1]                                    # OK
    assert np.abs(barrel[0] - none[0]).max() > 0.01                             # the engine saw another image
    assert (list(barrel[3].d), barrel[3].distortion_model) == ([0.0] * 5, 'plumb_bob')
    assert unknown[1]['undistortion'].startswith("camera_info.distortion_model='my_lens' with non-zero D")
    assert unknown[1]['frames_not_undistorted'] == '1' and unknown[2] == bytes([1]), unknown[1]   # WARN
    assert 'frames not undistorted' in next(s.message for d in diags for s in d.status
                                            if _ours([d], 'feature_node') and s.level == bytes([1]))
    np.testing.assert_array_equal(unknown[0], none[0])                          # processed as it is
    assert (list(unknown[3].d), unknown[3].distortion_model) == (BARREL, 'my_lens')
    assert off[1]['undistortion'] == 'off' and off[1]['frames_undistorted'] == '1' and off[2] == bytes([0])
    np.testing.assert_array_equal(off[0], none[0])
    assert list(off[3].d) == BARREL


def test_monitor_undistorts_the_checked_frame_as_the_feature_node_does(fp32_graph, images):
    """With the camera's camera_info (barrel distortion), the monitor's FP32 reference runs on the
    undistorted frame: outputs of the same graph on the undistorted frame agree (SSIM > 0.99)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from gplq_ros.nodes.monitor_node import MonitorNode
    from gplq_ros.onboard.engine import load
    from gplq_ros.onboard.messages import encode_corners, encode_map
    from gplq_ros.onboard.undistort import Undistorter
    frame = _frames(images, 1)[0]
    und, done = Undistorter()(frame, _camera_info(BARREL))
    assert done
    o = load(Path(fp32_graph), threads=1)(und)                       # what the feature node publishes
    p = InProcess(MonitorNode, {'reference_model': str(fp32_graph), 'vocabulary': 'none', 'check_every_n': 1,
                                'diagnostics_period': 0.2},
                  remap=['image:=/wk_mu/image', 'camera_info:=/wk_mu/camera_info',
                         'boundary_map:=/wk_mu/boundary_map', 'corners:=/wk_mu/corners'])
    try:
        p.transition('configure')
        diags = p.collect(DiagnosticArray, '/diagnostics')
        cam, info = p.publisher(Image, '/wk_mu/image'), p.publisher(CameraInfo, '/wk_mu/camera_info')
        bmap, corners = p.publisher(Image, '/wk_mu/boundary_map'), p.publisher(PointCloud2, '/wk_mu/corners')
        p.transition('activate')
        assert p.spin(30, lambda: min(x.get_subscription_count() for x in (cam, info, bmap, corners)) >= 1)
        info.publish(_camera_info(BARREL))
        assert p.spin(10, lambda: p.node.camera_info is not None)
        msg = _image(p.node, frame)
        cam.publish(msg)
        assert p.spin(10, lambda: p.node.join.waiting(_key(msg)))
        bmap.publish(encode_map(o.boundary, msg.header))
        corners.publish(encode_corners(o.corners_px, o.corners.response, msg.header))
        assert p.spin(60, lambda: p.node.drift.checks == 1), p.node.worker.health()
        assert p.spin(5, lambda: _ours(diags, 'monitor_node') and
                      _ours(diags, 'monitor_node')[-1]['undistortion'] == 'on (plumb_bob)')
        assert p.node.drift.last['boundary_ssim'] > 0.99, p.node.drift.last
    finally:
        p.close()


@pytest.fixture
def synthetic_place_map(tmp_path):
    """A real place map file (synthetic descriptors and boundary orthomap, as in test_localize), its
    vocabulary file, the descriptor function and the frames' boundary-map function."""
    from test_localize import _feature_fn, _synthetic_map, with_boundary

    from gplq_ros.onboard.vocabulary import VocabMeta, Vocabulary
    centers = np.random.default_rng(0).normal(size=(4, 24)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    vocab = Vocabulary(centers, VocabMeta('dinov2_vits14', 'w' * 64, 9, 'value', 224, 4, 0, 100))
    f = _feature_fn()
    pmap = _synthetic_map(f, size_m=100.0, vocab=centers)
    frame = with_boundary(pmap)
    pmap.save(tmp_path / 'map.safetensors')
    vocab.save(tmp_path / 'vocab.safetensors')
    return tmp_path / 'map.safetensors', tmp_path / 'vocab.safetensors', f, frame


def test_localizer_node_searches_in_its_worker_and_resumes_after_deactivate(synthetic_place_map):
    """The localizer node's callbacks only join: a search held inside the (real) localizer does not
    delay the diagnostics timer (a status every 0.1 s throughout); deactivated during that search, the
    frame gives no pose; after activate the same localizer thread publishes poses again."""
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from gplq_ros.nodes.localizer_node import LocalizerNode
    from gplq_ros.onboard.messages import encode_descriptor, encode_map
    map_path, vocab_path, f, frame = synthetic_place_map
    p = InProcess(LocalizerNode, {'map': str(map_path), 'vocabulary': str(vocab_path), 'init_fixes': 1,
                                  'diagnostics_period': 0.1},
                  remap=['descriptor:=/wk_loc/descriptor', 'boundary_map:=/wk_loc/boundary_map'])
    try:
        p.transition('configure')
        loc = p.node.localizer = Held(p.node.localizer, limit=1.5)
        poses = p.collect(PoseWithCovarianceStamped, '/localizer_node/pose')
        diags = p.collect(DiagnosticArray, '/diagnostics')
        dpub, bpub = p.publisher(Image, '/wk_loc/descriptor'), p.publisher(Image, '/wk_loc/boundary_map')
        p.transition('activate')
        assert p.spin(30, lambda: dpub.get_subscription_count() >= 1 and bpub.get_subscription_count() >= 1)
        sent = []

        def feed(t):          # boundary map first, descriptor second: joined by stamp
            header = Header(frame_id='camera_optical_frame', stamp=p.node.get_clock().now().to_msg())
            sent.append((header.stamp.sec, header.stamp.nanosec))
            xy = (40.0 + 0.5 * t, -40.0 - 0.5 * t)
            bpub.publish(encode_map(frame(xy, 0.3, 40.0), header))
            dpub.publish(encode_descriptor(f(*xy, 0.3), header))
        feed(0)
        assert p.spin(30, lambda: len(poses) == 1)
        loc.hold = True
        feed(1)
        assert p.spin(30, loc.entered.is_set)                        # frame 1 is inside the localizer
        n = len(_ours(diags, 'localizer_node'))
        p.spin(0.8)                                                  # the search goes on: statuses keep coming
        assert len(_ours(diags, 'localizer_node')) - n >= 4             # 8 due in 0.8 s (period 0.1 s)
        p.transition('deactivate')
        loc.release.set()
        assert p.spin(10, lambda: loc.calls == 2)
        p.spin(0.3)

        def gaps():
            t = np.array([d.header.stamp.sec + d.header.stamp.nanosec * 1e-9 for d in diags
                          if any(s.name == 'gplq_ros: localizer_node' for s in d.status)])
            return len(t), np.diff(t).max()
        n, gap = gaps()
        assert n > 10 and gap < 0.5, gap                             # the diagnostics never waited for the search
        assert len(poses) == 1                                       # deactivated during its search: no pose
        thread = p.node.worker.thread
        assert thread.is_alive()
        p.transition('activate')
        assert p.spin(30, lambda: dpub.get_subscription_count() >= 1 and bpub.get_subscription_count() >= 1)
        for t in (2, 3):
            feed(t)
            assert p.spin(30, lambda: len(poses) == t), (t, p.node.worker.health(), p.node.counts)
        p.spin(0.3)
        assert [_key(m) for m in poses] == [sent[t] for t in (0, 2, 3)]
        assert p.node.worker.thread is thread and thread.is_alive()
        assert gaps()[1] < 0.5
        last = _ours(diags, 'localizer_node')[-1]
        assert last['worker_alive'] == 'True' and last['frames_skipped'] == '1' and last['no_fix_unpaired'] == '0'
        assert last['no_fix_filter_fault'] == '0' and last['no_fix_malformed'] == '0', last
    finally:
        p.close()
