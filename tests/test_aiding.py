"""The localizer's optional inputs: odometry and height above ground (``onboard.aiding``).

Pure logic first (no rclpy): the stamped buffers (interpolation, yaw wrap-around, each refusal
counted by reason, a clock jump back), the message checks (real nav_msgs/sensor_msgs/std_msgs
messages, each bad value refused naming its field) and the status with a missing input. Then
localizer_node in this process with a real rclpy context and executor (``test_workers.InProcess``)
and real publishers: both inputs off subscribe to nothing and call the localizer as before; on,
odometry and height published around a frame's stamp reach ``Localizer.update`` interpolated to
that stamp, frames without recent ones are localized without them and counted, bad messages are
refused and counted while the node goes on."""
import math
import time

import numpy as np
import pytest

from gplq_ros.onboard.aiding import (AidingConfig, HeightBuffer, Pose2D, PoseBuffer, aiding_status, altitude_height,
                                     odometry_pose, range_height, wrap_angle, yaw_of_quaternion)
from gplq_ros.onboard.status import Level


# -- buffers -----------------------------------------------------------------------------------------------------
def test_pose_buffer_interpolates_and_refuses_by_reason():
    b = PoseBuffer(size=5, max_gap_s=0.2, max_age_s=0.1)
    assert b.at(1.0) is None and b.missing['empty'] == 1 and b.last_missing.startswith('empty')
    b.add(10.0, Pose2D(0.0, 0.0, 0.0))
    b.add(10.1, Pose2D(1.0, -2.0, 0.2))
    p = b.at(10.025)
    assert p == pytest.approx((0.25, -0.5, 0.05))
    assert b.at(10.1) == pytest.approx((1.0, -2.0, 0.2))                      # on a sample
    assert b.at(10.15) == pytest.approx((1.0, -2.0, 0.2)) and b.held == 1     # after the newest: held ...
    assert b.at(10.25) is None and b.missing['stale'] == 1                    # ... for at most max_age_s
    assert 'stale: newest sample 0.150 s before the frame' in b.last_missing, b.last_missing
    assert b.at(9.9) is None and b.missing['before'] == 1
    b.add(10.5, Pose2D(5.0, 5.0, 0.0))                                         # 0.4 s after the previous one
    assert b.at(10.3) is None and b.missing['gap'] == 1 and 'apart (max 0.2 s)' in b.last_missing
    assert b.used == 3 and b.missing_total == 4


def test_pose_buffer_yaw_goes_the_short_way_round():
    b = PoseBuffer(max_gap_s=1.0)
    b.add(0.0, Pose2D(0.0, 0.0, math.radians(170)))
    b.add(1.0, Pose2D(0.0, 0.0, math.radians(-170)))      # 20 degrees on, across +-180
    assert math.degrees(b.at(0.25).yaw) == pytest.approx(175.0)
    assert abs(math.degrees(b.at(0.5).yaw)) == pytest.approx(180.0)
    assert math.degrees(b.at(0.75).yaw) == pytest.approx(-175.0)
    b.add(2.0, Pose2D(0.0, 0.0, 7 * math.pi))              # stored wrapped
    assert b.newest()[1][2] == pytest.approx(-math.pi)
    assert wrap_angle(math.pi) == pytest.approx(-math.pi) and wrap_angle(-3 * math.pi / 2) == pytest.approx(math.pi / 2)


def test_buffers_are_bounded_sorted_and_restart_when_the_clock_jumps_back():
    b = PoseBuffer(size=3, max_gap_s=1.0)
    for t in (1.0, 3.0, 2.0):                              # out of order: sorted
        b.add(t, Pose2D(t, 0.0, 0.0))
    assert b.at(1.5).x == pytest.approx(1.5) and b.at(2.5).x == pytest.approx(2.5)
    b.add(2.0, Pose2D(20.0, 0.0, 0.0))                     # the same stamp again: replaced
    assert b.at(2.0).x == 20.0 and len(b) == 3
    b.add(4.0, Pose2D(4.0, 0.0, 0.0))                      # beyond size: the oldest goes
    assert len(b) == 3 and b.at(1.5) is None and b.missing['before'] == 1
    b.add(0.5, Pose2D(0.5, 0.0, 0.0))                      # older than everything kept: a replayed bag
    assert len(b) == 1 and b.resets == 1 and b.at(0.5).x == 0.5
    with pytest.raises(ValueError, match='odometry x=nan'):
        b.add(5.0, Pose2D(float('nan'), 0.0, 0.0))
    with pytest.raises(ValueError, match='stamp inf'):
        b.add(float('inf'), Pose2D(0.0, 0.0, 0.0))
    assert len(b) == 1
    with pytest.raises(ValueError, match='size=1'):
        PoseBuffer(size=1)


def test_height_buffer_uses_samples_within_max_age():
    h = HeightBuffer(size=10, max_age_s=0.1)
    assert h.at(0.0) is None and h.missing['empty'] == 1
    h.add(1.0, 40.0)
    h.add(1.1, 42.0)
    assert h.at(1.05) == pytest.approx(41.0)                # both within 0.1 s: interpolated
    assert h.at(0.95) == pytest.approx(40.0)                # before the first, within 0.1 s: nearest
    assert h.at(1.15) == pytest.approx(42.0) and h.held == 1
    assert h.at(1.25) is None and h.missing['stale'] == 1
    assert h.at(0.8) is None and h.missing['before'] == 1
    h.add(1.5, 50.0)
    assert h.at(1.3) is None and h.missing['gap'] == 1      # 0.2 s from either neighbour
    assert h.at(1.45) == pytest.approx(50.0)                # only the later one is close enough
    for bad in (0.0, -3.0, float('nan'), float('inf')):
        with pytest.raises(ValueError, match='height'):
            h.add(2.0, bad)
    assert len(h) == 3


# -- messages -> numbers -----------------------------------------------------------------------------------------
def _odometry(t, x, y, yaw, q=None):
    from nav_msgs.msg import Odometry
    m = Odometry()
    m.header.stamp.sec, m.header.stamp.nanosec = int(t), int(round((t - int(t)) * 1e9))
    m.header.frame_id, m.child_frame_id = 'odom', 'base_link'
    m.pose.pose.position.x, m.pose.pose.position.y, m.pose.pose.position.z = x, y, 30.0
    o = m.pose.pose.orientation
    o.x, o.y, o.z, o.w = q if q is not None else (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))
    return m


def _range(t, r, lo=0.2, hi=100.0):
    from sensor_msgs.msg import Range
    m = Range(radiation_type=Range.INFRARED, field_of_view=0.05, min_range=lo, max_range=hi, range=r)
    m.header.stamp.sec, m.header.stamp.nanosec = int(t), int(round((t - int(t)) * 1e9))
    return m


def test_odometry_messages_give_stamp_and_planar_pose():
    t, p = odometry_pose(_odometry(12.5, 3.0, -4.0, math.radians(120)))
    assert t == pytest.approx(12.5) and p.x == 3.0 and p.y == -4.0 and math.degrees(p.yaw) == pytest.approx(120)
    # a rolled and pitched vehicle: the yaw of the orientation (ZYX), not of a tilted axis
    cy, sy, cr, sr = math.cos(0.3), math.sin(0.3), math.cos(0.1), math.sin(0.1)
    q = (sr * cy, sr * sy, cr * sy, cr * cy)         # roll 0.2 rad about x, then yaw 0.6 about z
    assert yaw_of_quaternion(*q) == pytest.approx(0.6)
    assert yaw_of_quaternion(0.0, 0.0, 2 * math.sin(0.25), 2 * math.cos(0.25)) == pytest.approx(0.5)  # normalised
    with pytest.raises(ValueError, match=r'Odometry.pose.pose.orientation=\(0.0, 0.0, 0.0, 0.0\): not a rotation'):
        odometry_pose(_odometry(1.0, 0.0, 0.0, 0.0, q=(0.0, 0.0, 0.0, 0.0)))
    with pytest.raises(ValueError, match='Odometry.pose.pose.position.y=nan'):
        odometry_pose(_odometry(1.0, 0.0, float('nan'), 0.0))
    with pytest.raises(ValueError, match='Odometry.header.stamp is zero'):
        odometry_pose(_odometry(0.0, 0.0, 0.0, 0.0))


def test_range_and_altitude_readings_outside_their_limits_are_refused():
    from std_msgs.msg import Float64
    assert range_height(_range(3.25, 37.5)) == pytest.approx((3.25, 37.5))
    for r, why in [(150.0, r'Range.range=150.0: outside \[min_range=0.2, max_range=100\]'),
                   (0.1, r'Range.range=0.1: outside'), (-1.0, 'outside'),
                   (float('inf'), 'Range.range=inf: not finite'), (float('-inf'), 'not finite'),
                   (float('nan'), 'Range.range=nan: not finite')]:
        with pytest.raises(ValueError, match=why):
            range_height(_range(1.0, r))
    with pytest.raises(ValueError, match='Range.header.stamp is zero'):
        range_height(_range(0.0, 10.0))
    assert altitude_height(Float64(data=55.0).data) == 55.0
    for bad in (-2.0, 0.0, float('nan'), float('inf')):
        with pytest.raises(ValueError, match=f'Float64.data={bad!r}'):
            altitude_height(Float64(data=bad).data)


def test_aiding_settings_and_status():
    c = AidingConfig()
    assert not c.use_odometry and not c.use_height and c.height_type == 'range'
    with pytest.raises(ValueError, match="AidingConfig.height_type='baro'"):
        AidingConfig(height_type='baro')
    with pytest.raises(ValueError, match='AidingConfig.odom_max_gap_s=0'):
        AidingConfig(odom_max_gap_s=0)
    ok = (Level.OK, 'fix')
    assert aiding_status(ok, {'odom': 0, 'height': 0}, {}) == ok
    warn = (Level.WARN, 'fix; odom missing for 3 frame(s) (stale: x)')
    assert aiding_status(ok, {'odom': 3}, {'odom': 'stale: x'}) == warn
    assert aiding_status((Level.WARN, 'no fix: gate'), {'odom': 0}, {}) == (Level.WARN, 'no fix: gate')
    assert aiding_status((Level.ERROR, 'filter fault: x'), {'height': 1}, {'height': 'empty: y'}) == \
        (Level.ERROR, 'filter fault: x; height missing for 1 frame(s) (empty: y)')


def test_bringup_remaps_the_optional_inputs():
    """odom_topic / height_topic: the localizer's odom and height remapped (relative names by
    default: the namespace's own); a bad topic name is refused naming the argument."""
    from gplq_ros.bringup import description as bringup
    loc = bringup.node_specs({'place_map': '/m.safetensors'})[-1]
    assert loc.name == 'localizer_node' and {('odom', 'odom'), ('height', 'height')} <= set(loc.remappings)
    loc = bringup.node_specs({'place_map': '/m.safetensors', 'odom_topic': '/mavros/local_position/odom',
                              'height_topic': '/mavros/global_position/rel_alt'})[-1]
    argv = bringup.ros_argv(loc)
    assert 'odom:=/mavros/local_position/odom' in argv and 'height:=/mavros/global_position/rel_alt' in argv
    with pytest.raises(ValueError, match="launch argument odom_topic='/mavros/': not a ROS topic"):
        bringup.node_specs({'odom_topic': '/mavros/'})
    assert {'odom_topic', 'height_topic'} <= {a.name for a in bringup.ARGUMENTS}


# -- localizer_node in this process ------------------------------------------------------------------------------
@pytest.fixture
def place_map(tmp_path):
    """A real place map file (synthetic descriptors, as in test_localize) and its vocabulary."""
    from test_localize import _feature_fn, _synthetic_map

    from gplq_ros.onboard.vocabulary import VocabMeta, Vocabulary
    centers = np.random.default_rng(0).normal(size=(4, 24)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    f = _feature_fn()
    _synthetic_map(f, size_m=100.0, vocab=centers).save(tmp_path / 'map.safetensors')
    Vocabulary(centers, VocabMeta('dinov2_vits14', 'w' * 64, 9, 'value', 224, 4, 0, 100)).save(
        tmp_path / 'vocab.safetensors')
    return tmp_path / 'map.safetensors', tmp_path / 'vocab.safetensors', f


class Recording:
    """The real localizer; the keywords of every ``update`` call are kept (``calls``)."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def update(self, *a, **kw):
        self.calls.append(kw)
        return self.real.update(*a, **kw)

    def __getattr__(self, name):
        return getattr(self.real, name)


def _start(place_map, ns, **params):
    from test_workers import InProcess

    from gplq_ros.nodes.localizer_node import LocalizerNode
    map_path, vocab_path, f = place_map
    p = InProcess(LocalizerNode, dict({'map': str(map_path), 'vocabulary': str(vocab_path), 'init_fixes': 1,
                                       'refine': False, 'diagnostics_period': 0.1}, **params),
                  remap=[f'descriptor:=/{ns}/descriptor', f'odom:=/{ns}/odom', f'height:=/{ns}/height'])
    p.transition('configure')
    loc = p.node.localizer = Recording(p.node.localizer)
    return p, loc, f


def _stamp(t):
    from builtin_interfaces.msg import Time
    return Time(sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))


def _diag(diags):
    from test_workers import _ours
    got = _ours(diags, 'localizer_node')
    return got[-1] if got else {}


def test_localizer_node_without_optional_inputs_subscribes_to_neither(place_map):
    """Defaults: no odom or height subscription, the localizer called as before (no keywords), no
    aiding values in /diagnostics."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from gplq_ros.onboard.messages import encode_descriptor
    p, loc, f = _start(place_map, 'ai_off')
    try:
        diags = p.collect(DiagnosticArray, '/diagnostics')
        dpub = p.publisher(Image, '/ai_off/descriptor')
        p.transition('activate')
        assert sorted(s.topic_name for s in p.node.subscriptions) == ['/ai_off/descriptor']
        assert p.node.odom is None and p.node.height is None
        assert p.spin(30, lambda: dpub.get_subscription_count() >= 1)
        dpub.publish(encode_descriptor(f(40.0, -40.0, 0.3), Header(frame_id='cam', stamp=_stamp(100.0))))
        assert p.spin(30, lambda: loc.calls and _diag(diags).get('frames') == '1')
        assert loc.calls == [{}]
        assert not any(k.startswith(('odom_', 'height_')) or k == 'last_height_m' for k in _diag(diags))
    finally:
        p.close()


def test_localizer_node_passes_odometry_and_height_at_the_frame_stamp(place_map):
    """use_odometry and use_height (Range): odometry and height published around a frame's stamp
    reach Localizer.update interpolated to it; a frame long after the last odometry is localized
    without it and counted (odom_missing, WARN); bad odometry and height messages are refused and
    counted, and the node goes on."""
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Image, Range
    from std_msgs.msg import Header

    from gplq_ros.onboard.messages import encode_descriptor
    p, loc, f = _start(place_map, 'ai_on', use_odometry=True, use_height=True, input_max_age_s=0.2,
                       aiding_qos_reliability='reliable')    # every message counts here
    try:
        diags = p.collect(DiagnosticArray, '/diagnostics')
        dpub, opub, hpub = (p.publisher(Image, '/ai_on/descriptor'), p.publisher(Odometry, '/ai_on/odom'),
                            p.publisher(Range, '/ai_on/height'))
        p.transition('activate')
        assert sorted(s.topic_name for s in p.node.subscriptions) == ['/ai_on/descriptor', '/ai_on/height',
                                                                      '/ai_on/odom']
        assert p.spin(30, lambda: min(x.get_subscription_count() for x in (dpub, opub, hpub)) >= 1)

        def frame(t):
            n = len(loc.calls)
            dpub.publish(encode_descriptor(f(40.0, -40.0, 0.3), Header(frame_id='cam', stamp=_stamp(t))))
            assert p.spin(30, lambda: len(loc.calls) > n)
            return loc.calls[-1]

        # odometry at 20 Hz and a rangefinder at 10 Hz around the frame at t = 100.0 (each taken
        # before the next is sent: the subscriptions keep the last 10)
        for i, t in enumerate(np.arange(99.0, 100.21, 0.05)):
            opub.publish(_odometry(t, 2.0 * (t - 99.0), 1.0, 0.5 + 0.1 * (t - 99.0)))
            if i % 2 == 0:
                hpub.publish(_range(t, 40.0 + 10.0 * (t - 99.0)))
            assert p.spin(10, lambda: len(p.node.odom) == i + 1 and len(p.node.height) == i // 2 + 1), \
                (i, len(p.node.odom), len(p.node.height))
        kw = frame(100.02)
        assert kw['odom'].x == pytest.approx(2.04) and kw['odom'].y == pytest.approx(1.0)
        assert kw['odom'].yaw == pytest.approx(0.602) and kw['height_m'] == pytest.approx(50.2)
        assert type(kw['odom']).__name__ == 'OdomPose'
        # 1 s after the last odometry and height: both missing, the frame still localized
        kw = frame(101.2)
        assert kw == {'odom': None, 'height_m': None}
        # bad messages: refused, counted; the buffers keep what they had
        opub.publish(_odometry(101.3, float('nan'), 0.0, 0.0))
        opub.publish(_odometry(101.3, 0.0, 0.0, 0.0, q=(0.0, 0.0, 0.0, 0.0)))
        for r in (-1.0, float('nan'), 150.0, float('inf')):      # below min_range, NaN, above max_range, none
            hpub.publish(_range(101.3, r))
        assert p.spin(10, lambda: p.node.rejected == {'odom': 2, 'height': 4}), p.node.rejected
        assert len(p.node.odom) == 25 and len(p.node.height) == 13
        # good ones again: the next frame has both
        opub.publish(_odometry(101.4, 5.0, 6.0, 0.0))
        opub.publish(_odometry(101.5, 6.0, 6.0, 0.0))
        hpub.publish(_range(101.45, 30.0))
        assert p.spin(10, lambda: len(p.node.odom) == 27 and len(p.node.height) == 14)
        kw = frame(101.45)
        assert kw['odom'].x == pytest.approx(5.5) and kw['height_m'] == pytest.approx(30.0)

        def seen():
            d = _diag(diags)
            return d.get('frames') == '3' and d.get('odom_rejected') == '2' and d.get('height_rejected') == '4'
        assert p.spin(10, seen), _diag(diags)
        d = _diag(diags)
        assert float(d['last_height_m']) == pytest.approx(30.0)
        assert d['odom_used'] == '2' and d['odom_missing'] == '1' and d['odom_missing_last'].startswith('stale: ')
        assert d['height_used'] == '2' and d['height_missing'] == '1' and d['height_missing_last'].startswith('stale')
        assert 'Range.range=inf' in d['height_rejected_last'] and 'not a rotation' in d['odom_rejected_last']
        assert d['worker_alive'] == 'True' and d['no_fix_malformed'] == '0', d
        warned = [s for m in diags for s in m.status if s.name == 'gplq_ros: localizer_node'
                  and 'odom missing for 1 frame(s)' in s.message]
        assert warned and all(s.level == bytes([Level.WARN]) for s in warned)
    finally:
        p.close()


def test_localizer_node_altitude_height_uses_the_receipt_time(place_map):
    """height_type altitude: std_msgs/Float64 (no stamp) is stored at its receipt time and given to
    the localizer for a frame stamped now; negative, zero and NaN altitudes are refused, counted."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64, Header

    from gplq_ros.onboard.messages import encode_descriptor
    p, loc, f = _start(place_map, 'ai_alt', use_height=True, height_type='altitude', input_max_age_s=5.0,
                       aiding_qos_reliability='reliable')
    try:
        diags = p.collect(DiagnosticArray, '/diagnostics')
        dpub, hpub = p.publisher(Image, '/ai_alt/descriptor'), p.publisher(Float64, '/ai_alt/height')
        p.transition('activate')
        assert sorted(s.topic_name for s in p.node.subscriptions) == ['/ai_alt/descriptor', '/ai_alt/height']
        assert p.spin(30, lambda: dpub.get_subscription_count() >= 1 and hpub.get_subscription_count() >= 1)
        for v in (-5.0, 0.0, float('nan')):
            hpub.publish(Float64(data=v))
        hpub.publish(Float64(data=62.5))
        assert p.spin(10, lambda: len(p.node.height) == 1 and p.node.rejected['height'] == 3), p.node.rejected
        time.sleep(0.05)
        dpub.publish(encode_descriptor(f(40.0, -40.0, 0.3),
                                       Header(frame_id='cam', stamp=p.node.get_clock().now().to_msg())))
        assert p.spin(30, lambda: loc.calls)
        assert loc.calls[-1] == {'height_m': 62.5}
        assert p.spin(10, lambda: _diag(diags).get('last_height_m') == '62.5'), _diag(diags)
        assert _diag(diags)['height_rejected'] == '3' and 'Float64.data=nan' in _diag(diags)['height_rejected_last']
    finally:
        p.close()


def test_localizer_node_process_takes_its_optional_inputs_from_parameters_and_remaps(place_map, tmp_path):
    """The node as the bringup starts it (its own process, ``--ros-args`` parameters and remappings):
    odometry and an altitude reach it, bad altitudes are refused and counted, a frame long after
    the last samples is counted as missing both; the process keeps running."""
    from helpers.ros import Harness, node_argv, start, stop
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64, Header

    from gplq_ros.onboard.messages import encode_descriptor
    map_path, vocab_path, f = place_map
    proc = start(node_argv('gplq_ros.nodes.localizer_node', '-p', f'map:={map_path}', '-p', f'vocabulary:={vocab_path}',
                           '-p', 'refine:=false', '-p', 'init_fixes:=1', '-p', 'diagnostics_period:=0.2',
                           '-p', 'use_odometry:=true', '-p', 'use_height:=true', '-p', 'height_type:=altitude',
                           '-p', 'input_max_age_s:=5.0', '-r', 'descriptor:=/ai_px/descriptor',
                           '-r', 'odom:=/ai_px/odom', '-r', 'height:=/mavros/global_position/rel_alt'),
                 tmp_path / 'node.log')
    h = Harness('test_aiding_process')
    try:
        from diagnostic_msgs.msg import DiagnosticArray
        diags = h.collect(DiagnosticArray, '/diagnostics')
        dpub = h.node.create_publisher(Image, '/ai_px/descriptor', 10)
        opub = h.node.create_publisher(Odometry, '/ai_px/odom', 10)
        hpub = h.node.create_publisher(Float64, '/mavros/global_position/rel_alt', 10)
        assert h.spin(60, lambda: min(x.get_subscription_count() for x in (dpub, opub, hpub)) >= 1), \
            (tmp_path / 'node.log').read_text()[-2000:]
        now = h.node.get_clock().now().nanoseconds * 1e-9

        def received():      # best effort (the default): sent until the subscriptions have matched too
            opub.publish(_odometry(now, 3.0, 4.0, 0.2))
            hpub.publish(Float64(data=48.0))
            d = _diag(diags)
            return d.get('odom_buffered') == '1' and d.get('height_buffered', '0') != '0'
        assert h.spin(20, received), _diag(diags)
        for v in (float('nan'), -1.0):
            hpub.publish(Float64(data=v))
        assert h.spin(10, lambda: _diag(diags).get('height_rejected') == '2'), _diag(diags)
        for i, t in enumerate((now + 0.05, now + 20.0)):     # with both; 20 s after them: without either
            dpub.publish(encode_descriptor(f(40.0, -40.0, 0.3), Header(frame_id='cam', stamp=_stamp(t))))
            assert h.spin(10, lambda: _diag(diags).get('frames') == str(i + 1)), _diag(diags)   # newest-only slot
        d = _diag(diags)
        assert d['odom_used'] == '1' and d['odom_missing'] == '1' and d['odom_missing_last'].startswith('stale')
        assert d['height_used'] == '1' and d['height_missing'] == '1' and d['last_height_m'] == '48'
        assert d['height_rejected'] == '2' and 'Float64.data=-1.0' in d['height_rejected_last']
        assert proc.poll() is None
    finally:
        h.close()
        stop(proc)
    assert 'height message refused: Float64.data=nan' in (tmp_path / 'node.log').read_text()
