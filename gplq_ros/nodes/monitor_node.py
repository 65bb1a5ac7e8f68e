"""monitor_node: latency, rates, drops and drift of the feature node against FP32.

Subscribes the camera ``image`` and the feature node's ``boundary_map``, ``corners`` and
``descriptor`` (remap them). Latency = receipt time of a boundary map minus its header
stamp (the camera's acquisition time): p50/p95/max over the last ``latency_window``
outputs. Every ``check_every_n``-th camera frame is kept; when the feature outputs with its
stamp have arrived, a reference thread runs the FP32 engine on it and computes drift
(``gplq_ros.onboard.drift``). ERROR once ``consecutive`` checks in a row had a metric below
its bound; WARN for fewer, or for a p95 latency above ``latency_p95_warn_ms``, or a drop
rate above ``drop_rate_warn``; STALE when inputs arrive but no output for
``stale_after_s``. Published on ``/diagnostics`` and, numerically, on ``~/status``
(``gplq_ros.onboard.layout.STATUS_FIELDS``) every ``period`` seconds.
"""
import math
import sys
import threading
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

from ..onboard.drift import DriftBounds, DriftMonitor, Level, compare
from ..onboard.layout import DECODERS, STATUS_FIELDS
from ..onboard.slot import SlotWorker
from ..onboard.stats import LatencyWindow, RateMeter, StampMatcher
from . import diag
from .image_codec import ImageFormatError, image_to_rgb
from .params import Params, declare_qos
from .run import run_node


def _key(stamp):
    return (int(stamp.sec), int(stamp.nanosec))


class MonitorNode(Node):
    NODE_NAME = 'monitor_node'

    def __init__(self, **kw):
        super().__init__('monitor_node', **kw)
        p = self.params = Params(self)
        model = p.declare('reference_model', '', 'FP32 ONNX graph (gplq_export --fp32) for the drift reference; '
                          'required', read_only=True)
        vocab = p.declare('vocabulary', '', 'VLAD vocabulary; empty: the $GPLQ_HOME default; "none": no '
                          'descriptor drift', read_only=True)
        threads = p.declare('threads', 1, 'ONNX Runtime threads of the reference engine', (1, 64), read_only=True)
        p.declare('check_every_n', 10, 'run the FP32 reference on every n-th camera frame', (1, 100000))
        p.declare('descriptor_cosine_min', 0.5, 'drift bound: VLAD descriptor cosine to FP32', (0.0, 1.0))
        p.declare('boundary_ssim_min', 0.6, 'drift bound: boundary-map SSIM to FP32', (0.0, 1.0))
        p.declare('corner_repeatability_min', 0.4, 'drift bound: fraction of FP32 corners repeated within '
                  'one patch', (0.0, 1.0))
        p.declare('consecutive', 3, 'checks in a row below a bound before ERROR', (1, 1000))
        p.declare('latency_p95_warn_ms', 250.0, 'WARN above this end-to-end p95 latency', (1.0, 1e6))
        p.declare('drop_rate_warn', 0.5, 'WARN above this fraction of camera frames without output', (0.0, 1.0))
        p.declare('stale_after_s', 3.0, 'STALE when no output for this long while frames arrive', (0.1, 3600.0))
        window = p.declare('latency_window', 300, 'outputs in the latency percentiles', (1, 100000),
                           read_only=True)
        period = p.declare('period', 1.0, 'seconds between /diagnostics and ~/status messages', (0.05, 60.0),
                           read_only=True)
        self.hardware_id = p.declare('hardware_id', 'gplq_ros', 'hardware_id in /diagnostics', read_only=True)
        qos_cam = declare_qos(p, 'input_qos', 'best_effort', 5, 'the camera subscription')
        qos_out = declare_qos(p, 'output_qos', 'reliable', 10, 'the feature output subscriptions')

        if not model:
            raise ValueError('parameter reference_model is empty: set it to an FP32 graph from gplq_export --fp32')
        from ..paths import vocabulary_parameter
        from ..runtime.engine import load
        self.reference = load(Path(model), vocabulary_parameter(vocab), threads=threads)
        if self.reference.kind != 'fp32':
            raise ValueError(f'parameter reference_model={model!r}: kind={self.reference.kind!r}, the reference '
                             'must be an FP32 graph (gplq_export --fp32)')
        self.drift = DriftMonitor(self._bounds())
        self.latency = LatencyWindow(window)
        self.rate_in, self.rate_out = RateMeter(5.0), RateMeter(5.0)
        self.matcher = StampMatcher(grace_s=2.0)
        self.frames = {}          # stamp -> rgb kept for a drift check
        self.outputs = {}         # stamp -> {'boundary':..., 'corners':..., 'descriptor':...}
        self.need = ('boundary', 'corners') + (('descriptor',) if self.reference.centers is not None else ())
        self.last_output = None
        self.skipped = 0
        self.errors = 0
        self.last_error = ''
        self._lock = threading.Lock()
        self.create_subscription(Image, 'image', self.on_image, qos_cam)
        self.create_subscription(Image, 'boundary_map', self.on_boundary, qos_out)
        self.create_subscription(PointCloud2, 'corners', lambda m: self.on_output(m, 'corners'), qos_out)
        self.create_subscription(Image, 'descriptor', lambda m: self.on_output(m, 'descriptor'), qos_out)
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.pub_status = self.create_publisher(Float64MultiArray, '~/status', QoSProfile(depth=10))
        self.worker = SlotWorker(self._check, 'gplq_reference')
        self.slot = self.worker.slot
        self.create_timer(period, self.publish_status)
        self._level = Level.OK

    def _bounds(self) -> DriftBounds:
        p = self.params
        return DriftBounds(p['descriptor_cosine_min'], p['boundary_ssim_min'], p['corner_repeatability_min'],
                           p['consecutive'])

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # -- callbacks ---------------------------------------------------------------------------
    def on_image(self, msg: Image) -> None:
        now = self.now_s()
        self.rate_in.add(now)
        key = _key(msg.header.stamp)
        self.matcher.input(key, now)
        if self.rate_in.count % self.params['check_every_n']:
            return
        try:
            rgb = image_to_rgb(msg)
        except ImageFormatError:
            return   # the feature node reports malformed frames; nothing to compare
        with self._lock:
            self.frames[key] = rgb
            for k in sorted(self.frames)[:-4]:   # keep the newest four pending checks
                del self.frames[k]
                self.skipped += 1
            self._maybe_check(key)

    def on_boundary(self, msg: Image) -> None:
        now = self.now_s()
        stamp = msg.header.stamp
        self.latency.add(1e3 * (now - (stamp.sec + 1e-9 * stamp.nanosec)))
        self.rate_out.add(now)
        self.last_output = time.monotonic()
        self.matcher.output(_key(stamp))
        self.on_output(msg, 'boundary')

    def on_output(self, msg, kind: str) -> None:
        key = _key(msg.header.stamp)
        with self._lock:
            if key not in self.frames:
                return
            try:
                value = DECODERS[kind](msg)
            except ImageFormatError as e:
                self.errors += 1
                self.last_error = f'{kind}: {e}'
                return
            self.outputs.setdefault(key, {})[kind] = value
            self._maybe_check(key)

    def _maybe_check(self, key) -> None:
        got = self.outputs.get(key, {})
        if key in self.frames and all(k in got for k in self.need):
            if self.slot.put((key, self.frames.pop(key), self.outputs.pop(key))):
                self.skipped += 1
        for k in [k for k in self.outputs if k not in self.frames]:
            del self.outputs[k]

    # -- reference thread -------------------------------------------------------------------
    def _check(self, item) -> None:
        key, rgb, got = item
        try:
            ref = self.reference(rgb)
            metrics = compare(ref, got['boundary'], got['corners'], got.get('descriptor'))
        except Exception as e:  # a mismatched output (shape, vocabulary): report, keep monitoring
            with self._lock:
                self.errors += 1
                self.last_error = f'drift check failed: {type(e).__name__}: {e}'
            self.get_logger().error(self.last_error)
            return
        self.drift.bounds = self._bounds()
        before = self.drift.level
        level = self.drift.update(metrics)
        if level != before:
            text = ', '.join(f'{k} {v:.3f}' for k, v in metrics.items())
            log = self.get_logger().error if level == Level.ERROR else self.get_logger().warning \
                if level == Level.WARN else self.get_logger().info
            log(f'drift {level.name}: {text} (below bound: {self.drift.last_failed or "none"})')

    # -- status --------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        now = self.now_s()
        self.matcher.expire(now)
        lat = self.latency.summary()
        m = self.drift.last
        return {'input_rate_hz': self.rate_in.rate(now), 'output_rate_hz': self.rate_out.rate(now),
                'latency_p50_ms': lat['p50_ms'], 'latency_p95_ms': lat['p95_ms'], 'latency_max_ms': lat['max_ms'],
                'frames_in': self.rate_in.count, 'frames_out': self.rate_out.count, 'dropped': self.matcher.dropped,
                'drop_rate': self.matcher.drop_rate, 'checks': self.drift.checks,
                'descriptor_cosine': m.get('descriptor_cosine'), 'boundary_ssim': m.get('boundary_ssim'),
                'corner_repeatability': m.get('corner_repeatability'), 'failed_in_a_row': self.drift.failed_in_a_row}

    def decide(self, s: dict):
        p = self.params
        reasons = []
        level = self.drift.level
        if level == Level.ERROR:
            reasons.append(f'drift below bound for {self.drift.failed_in_a_row} checks in a row '
                           f'({", ".join(self.drift.last_failed)})')
        elif level == Level.WARN:
            reasons.append(f'drift below bound in the last check ({", ".join(self.drift.last_failed)})')
        if s['latency_p95_ms'] is not None and s['latency_p95_ms'] > p['latency_p95_warn_ms']:
            level = max(level, Level.WARN)
            reasons.append(f'p95 latency {s["latency_p95_ms"]:.0f} ms > {p["latency_p95_warn_ms"]:g}')
        if s['drop_rate'] > p['drop_rate_warn']:
            level = max(level, Level.WARN)
            reasons.append(f'drop rate {s["drop_rate"]:.2f} > {p["drop_rate_warn"]:g}')
        if self.errors:
            level = max(level, Level.WARN)
            reasons.append(self.last_error)
        idle = time.monotonic() - self.last_output if self.last_output is not None else math.inf
        if s['input_rate_hz'] > 0 and idle > p['stale_after_s'] and level != Level.ERROR:
            level = Level.STALE
            reasons.append(f'no feature output for {idle:.1f} s' if self.last_output else 'no feature output yet')
        return level, '; '.join(reasons) or 'ok'

    def publish_status(self) -> None:
        s = self.snapshot()
        level, text = self.decide(s)
        s['level'] = int(level)
        if level != self._level:
            self.get_logger().info(f'status {Level(self._level).name} -> {level.name}: {text}')
            self._level = level
        values = dict(s, checks_skipped=self.skipped, unmatched_outputs=self.matcher.unmatched,
                      check_every_n=self.params['check_every_n'], reference=str(self.reference.path))
        values.pop('level')
        diag.publish(self, self.pub_diag, level, text, values)
        msg = Float64MultiArray()
        msg.layout.dim = [MultiArrayDimension(label=','.join(STATUS_FIELDS), size=len(STATUS_FIELDS),
                                              stride=len(STATUS_FIELDS))]
        msg.data = [float('nan') if s[k] is None else float(s[k]) for k in STATUS_FIELDS]
        self.pub_status.publish(msg)

    def destroy_node(self):
        self.worker.stop()
        return super().destroy_node()


def main(argv=None) -> int:
    return run_node(MonitorNode, argv)


if __name__ == '__main__':
    sys.exit(main())
