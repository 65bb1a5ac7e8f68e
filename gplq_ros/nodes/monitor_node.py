"""monitor_node: latency, rates, drops and drift of the feature node against FP32.

Subscribes the camera ``image`` and the feature node's ``boundary_map``, ``corners`` and
``descriptor`` (remap them). Latency = receipt time of a boundary map minus its header
stamp (the camera's acquisition time): p50/p95/max over the last ``latency_window``
outputs. Every ``check_every_n``-th camera frame is kept; when the feature outputs with its
stamp have arrived (``onboard.drift.CheckJoin``), a reference thread runs the FP32 engine
on it and computes drift (``onboard.drift``). The level (``onboard.status.monitor_status``):
ERROR once ``consecutive`` checks in a row had a metric below its bound; WARN for fewer,
or for a p95 latency above ``latency_p95_warn_ms``, or a drop rate above
``drop_rate_warn``; STALE when inputs arrive but no output for ``stale_after_s``; ERROR
when the reference thread raised. Published on ``/diagnostics`` and, numerically, on
``~/status`` (``onboard.messages.STATUS_FIELDS``) every ``diagnostics_period`` seconds. The
bounds and limits are the parameters of ``DriftBounds`` and ``MonitorLimits`` (same names,
declared from them). A managed node (``nodes.lifecycle``): the reference engine is loaded in
on_configure, the inputs subscribed while active; ``autostart`` (default true) configures and
activates it at startup. The reference thread lives from configure to cleanup; a check whose
reference run outlived the active state is not counted (``checks_skipped``).
With ``undistort`` (default true, keep it as feature_node's) and the camera's ``camera_info``
(newest kept), the kept frame is undistorted exactly as feature_node undistorts it
(``onboard.undistort``) before the FP32 reference, so that drift compares the same image;
``undistortion`` on ``/diagnostics`` says which applied. ``photometric`` (keep it equal to
feature_node's) normalizes the checked frame as feature_node does.
"""
import sys
import threading
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Float64MultiArray

from gplq_ros.nodes import diag
from gplq_ros.nodes.lifecycle import ManagedNode
from gplq_ros.nodes.params import declare_qos
from gplq_ros.nodes.run import run_node
from gplq_ros.onboard.drift import CheckJoin, DriftBounds, DriftMonitor, compare
from gplq_ros.onboard.engine import BACKENDS, load
from gplq_ros.onboard.image_codec import ImageFormatError, image_to_rgb
from gplq_ros.onboard.messages import DECODERS, encode_status
from gplq_ros.onboard.paths import vocabulary_parameter
from gplq_ros.onboard.photometric import PHOTOMETRIC_MODES, apply_photometric
from gplq_ros.onboard.slot import SlotWorker
from gplq_ros.onboard.stats import FlowStats
from gplq_ros.onboard.status import Level, MonitorLimits, monitor_status
from gplq_ros.onboard.undistort import UndistortError, Undistorter


def _key(stamp):
    return (int(stamp.sec), int(stamp.nanosec))


class MonitorNode(ManagedNode):
    NODE_NAME = 'monitor_node'
    RENAMED = {'period': 'diagnostics_period'}

    def declare(self) -> None:
        p = self.params
        p.declare('reference_model', '', 'FP32 ONNX graph (gplq_export --fp32) for the drift reference; '
                  'required', read_only=True)
        p.declare('vocabulary', '', 'VLAD vocabulary; empty: the $GPLQ_HOME default; "none": no '
                  'descriptor drift', read_only=True)
        p.declare('threads', 1, 'graph runtime threads of the reference engine', (1, 64), read_only=True)
        p.declare('backend', 'auto', 'graph runtime of the FP32 reference: auto = openvino when '
                  'installed, else onnxruntime', choices=BACKENDS, read_only=True)
        p.declare('check_every_n', 10, 'run the FP32 reference on every n-th camera frame', (1, 100000))
        p.declare_settings(DriftBounds)       # descriptor_cosine_min, boundary_ssim_min, ..., consecutive
        p.declare_settings(MonitorLimits)     # latency_p95_warn_ms, drop_rate_warn, stale_after_s
        p.declare('undistort', True, 'undistort the checked frames with camera_info as feature_node does before '
                  'the FP32 reference (keep it equal to feature_node\'s undistort)')
        p.declare('photometric', 'none', 'photometric normalization of the checked frames as feature_node does '
                  '(keep it equal to feature_node\'s photometric)', choices=PHOTOMETRIC_MODES)
        p.declare('latency_window', 300, 'outputs in the latency percentiles', (1, 100000), read_only=True)
        self.declare_diagnostics_period('/diagnostics and ~/status messages')
        self.hardware_id = p.declare('hardware_id', 'gplq_ros', 'hardware_id in /diagnostics', read_only=True)
        self.qos_cam = declare_qos(p, 'input_qos', 'best_effort', 5, 'the camera subscription')
        self.qos_out = declare_qos(p, 'output_qos', 'reliable', 10, 'the feature output subscriptions')
        self.reference = None
        self._lock = threading.Lock()

    def configure(self) -> None:
        p = self.params
        model = p['reference_model']
        if not model:
            raise ValueError('parameter reference_model is empty: set it to an FP32 graph from gplq_export --fp32')
        self.reference = load(Path(model), vocabulary_parameter(p['vocabulary']), threads=p['threads'],
                              backend=p['backend'])
        if self.reference.kind != 'fp32':
            raise ValueError(f'parameter reference_model={model!r}: kind={self.reference.kind!r}, the reference '
                             'must be an FP32 graph (gplq_export --fp32)')
        self.drift = DriftMonitor(self._bounds())
        self.flow = FlowStats(p['latency_window'])
        self.join = CheckJoin(('boundary', 'corners') + (('descriptor',) if self.reference.centers is not None
                                                         else ()))
        self.last_output = None
        self.errors = 0
        self.last_error = ''
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.pub_status = self.create_publisher(Float64MultiArray, '~/status', QoSProfile(depth=10))
        self.publishers_ = [self.pub_diag, self.pub_status]
        self.worker = SlotWorker(self._check, 'gplq_reference', on_error=self._fail)
        self.timer = self.create_timer(p['diagnostics_period'], self.publish_status)
        self._level = Level.OK
        self.camera_info = None
        self.undistorter = Undistorter()
        self.undistortion = 'no camera_info'

    def activate(self) -> None:
        self.last_output = None    # staleness counts from activation, not from before a pause
        self.inputs += [
            self.create_subscription(Image, 'image', self.on_image, self.qos_cam),
            self.create_subscription(CameraInfo, 'camera_info', self.on_camera_info, self.qos_cam),
            self.create_subscription(Image, 'boundary_map', self.on_boundary, self.qos_out),
            self.create_subscription(PointCloud2, 'corners', lambda m: self.on_output(m, 'corners'), self.qos_out),
            self.create_subscription(Image, 'descriptor', lambda m: self.on_output(m, 'descriptor'), self.qos_out)]

    def release(self) -> None:
        super().release()
        self.reference = None

    def _bounds(self) -> DriftBounds:
        return self.params.settings(DriftBounds)

    def deactivate(self) -> None:
        if self.worker.slot.discard():     # the check waiting for the reference thread
            self.join.skip()
        self.join.clear()                  # frames kept for a check: their outputs will not come now

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def on_image(self, msg: Image) -> None:
        key = _key(msg.header.stamp)
        if self.flow.input(key, self.now_s()) % self.params['check_every_n']:
            return
        try:
            rgb = image_to_rgb(msg)
        except ImageFormatError:
            return   # the feature node reports malformed frames; nothing to compare
        self._submit(self.join.frame(key, rgb))

    def on_camera_info(self, msg: CameraInfo) -> None:
        with self._lock:
            self.camera_info = msg

    def on_boundary(self, msg: Image) -> None:
        self.flow.output(_key(msg.header.stamp), self.now_s())
        self.last_output = self.now_s()
        self.on_output(msg, 'boundary')

    def on_output(self, msg, kind: str) -> None:
        key = _key(msg.header.stamp)
        if not self.join.waiting(key):
            return
        try:
            value = DECODERS[kind](msg)
        except ImageFormatError as e:
            return self._fail(f'{kind}: {e}')
        self._submit(self.join.output(key, kind, value))

    def _submit(self, item) -> None:
        if item is not None and self.worker.slot.put(item):
            self.join.skip()

    def _check(self, item) -> None:
        """Reference thread: a failing check (a mismatched output) reaches ``_fail`` through the worker.
        A check whose reference run outlived the active state is not counted (``checks_skipped``)."""
        _, rgb, got = item
        with self._lock:
            info = self.camera_info
        if not self.params['undistort'] or info is None:
            self.undistortion = 'off' if not self.params['undistort'] else 'no camera_info'
        else:
            try:   # as feature_node: a distortion it cannot undo leaves the frame as it is
                rgb, done = self.undistorter(rgb, info)
                self.undistortion = f'on ({info.distortion_model})' if done else 'not needed (no distortion)'
            except UndistortError as e:
                self.undistortion = str(e)
        rgb = apply_photometric(rgb, self.params['photometric'])
        metrics = compare(self.reference(rgb), got['boundary'], got['corners'], got.get('descriptor'))
        with self.gate:
            if not self.outputs_allowed:
                self.join.skip()     # deactivated meanwhile: the node does no work while inactive
                return
            self.drift.bounds = self._bounds()
            before = self.drift.level
            level = self.drift.update(metrics)
        if level != before:   # one logging call per severity (rclpy refuses a call site that changes it)
            text = (f'drift {level.name}: ' + ', '.join(f'{k} {v:.3f}' for k, v in metrics.items())
                    + f' (below bound: {self.drift.last_failed or "none"})')
            if level == Level.ERROR:
                self.get_logger().error(text)
            elif level == Level.WARN:
                self.get_logger().warning(text)
            else:
                self.get_logger().info(text)

    def _fail(self, text: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = text
        self.get_logger().error(text)

    def publish_status(self) -> None:
        s = dict(self.flow.snapshot(self.now_s()), **self.drift.figures())
        p = self.params
        limits = p.settings(MonitorLimits)
        # staleness on the node's clock like the latencies (ROS time; /clock with use_sim_time)
        idle = max(0.0, self.now_s() - self.last_output) if self.last_output is not None else None
        with self._lock:
            errors, last_error = self.errors, self.last_error
        values = dict(s, checks_skipped=self.join.skipped, unmatched_outputs=self.flow.matcher.unmatched,
                      check_every_n=p['check_every_n'], reference=str(self.reference.path),
                      undistortion=self.undistortion,
                      lifecycle_state=self.state_label)
        level, text = diag.publish(self, self.pub_diag, monitor_status(self.drift, s, limits, errors, last_error,
                                                                       idle), values, self.worker)
        if level != self._level:
            self.get_logger().info(f'status {Level(self._level).name} -> {level.name}: {text}')
            self._level = level
        self.pub_status.publish(encode_status(dict(s, level=int(level))))


def main(argv=None) -> int:
    return run_node(MonitorNode, argv)


if __name__ == '__main__':
    sys.exit(main())
