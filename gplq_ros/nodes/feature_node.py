"""feature_node: camera image -> boundary map, corner map, corners, place descriptor.

Subscribes ``image`` (sensor_msgs/Image) or ``image/compressed`` (CompressedImage, with
``transport: compressed``); remap it to the camera topic. Decoding and validation run in
the subscription callback (a malformed message is logged once with the field and value,
counted, and skipped); the decoded frame goes to a newest-only slot, and an inference
thread runs the onboard engine on the newest frame and publishes, with the input header
copied, ``~/boundary_map``, ``~/corner_map``, ``~/corners`` and ``~/descriptor`` (layouts:
``gplq_ros.onboard.messages``). Frames replaced before inference (or waiting at a
deactivation) are counted as dropped; a frame inside the engine when the node was
deactivated gives no outputs and is counted as skipped. The inference thread lives from
configure to cleanup: after activate again the node carries on.
With ``camera_info`` (CameraInfo, optional) from the camera, ``~/camera_info`` carries its
calibration scaled to the published maps (``onboard.messages.scale_camera_info``; the newest
camera_info is used, intrinsics being constant). With ``undistort`` (default true) and a
camera_info whose distortion is non-zero (``plumb_bob``, ``rational_polynomial``) or
``equidistant``, the inference thread undistorts each frame before the engine
(``onboard.undistort``: remap tables computed once per calibration), into the pinhole camera
with the same K; the maps, corners and ``~/camera_info`` are then in that camera (D = 0,
R = I, P = [K | 0]). A distortion it cannot undo (an unknown model with non-zero D, a
camera_info of another image size) is logged once, counted in ``frames_not_undistorted``,
makes the status WARN, and the frame is processed as it is (its ``~/camera_info`` keeps the
camera's D, which then still describes the maps). ``undistortion`` on ``/diagnostics`` says
which applies. ``~/verify_image`` (mono8, ``verify_image_width`` wide, 0 = not published): the
undistorted frame in grey, before the photometric normalization, for localizer_node's
verification (``onboard.verify``: keypoints registered to the map's orthophoto layer; at 240 px
about 43 KB a frame). ``photometric`` (default ``none``; ``grayworld``: ``onboard.photometric``) normalizes
each frame after undistortion; the place map must have been built with the same setting.
Counters, engine latency, the lifecycle
state and the inference thread's health go to ``/diagnostics`` every ``diagnostics_period``
seconds. A managed node (``nodes.lifecycle``): the model is loaded in on_configure, the
camera subscribed while active; ``autostart`` (default true) configures and activates it at
startup.
"""
import sys
import threading
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from gplq_ros.nodes import diag
from gplq_ros.nodes.lifecycle import ManagedNode
from gplq_ros.nodes.params import declare_qos
from gplq_ros.nodes.run import run_node
from gplq_ros.onboard.engine import BACKENDS, PRECISIONS, load
from gplq_ros.onboard.image_codec import (MAX_PIXELS_DEFAULT, ImageFormatError, compressed_to_rgb, image_to_rgb,
                                          numpy_to_image)
from gplq_ros.onboard.messages import (MAP_RESOLUTIONS, encode_corners, encode_descriptor, encode_map,
                                       output_maps, scale_camera_info)
from gplq_ros.onboard.paths import vocabulary_parameter
from gplq_ros.onboard.photometric import PHOTOMETRIC_MODES, apply_photometric
from gplq_ros.onboard.slot import SlotWorker
from gplq_ros.onboard.stats import LatencyWindow
from gplq_ros.onboard.status import feature_status
from gplq_ros.onboard.undistort import UndistortError, Undistorter
from gplq_ros.onboard.verify import verify_frame


class FeatureNode(ManagedNode):
    NODE_NAME = 'feature_node'

    def declare(self) -> None:
        p = self.params
        p.declare('model', '', 'ONNX graph written by gplq_export (GPLQ or FP32); required', read_only=True)
        p.declare('artifact', '', 'GPLQ artifact holding the packed 4-bit weights of a packed graph; '
                  'empty: the file the graph names, next to it', read_only=True)
        p.declare('vocabulary', '', 'VLAD vocabulary (gplq_vocab); empty: $GPLQ_HOME/vocab default; '
                  '"none": publish no descriptor', read_only=True)
        p.declare('backend', 'auto', 'graph runtime: auto = openvino when installed and only the CPU '
                  'is asked for, else onnxruntime', choices=BACKENDS, read_only=True)
        p.declare('precision', 'f32', 'float precision of the openvino backend (bf16 on CPUs with '
                  'AVX-512 BF16/AMX)', choices=PRECISIONS, read_only=True)
        p.declare('threads', 2, 'graph runtime intra-op threads', (1, 64), read_only=True)
        p.declare('providers', 'CPUExecutionProvider', 'comma-separated ONNX Runtime execution '
                  'providers, in order of preference (e.g. CUDAExecutionProvider,CPUExecutionProvider)',
                  read_only=True)
        self.transport = p.declare('transport', 'raw', 'input transport: raw subscribes image (Image), '
                                   'compressed subscribes image/compressed (CompressedImage)',
                                   choices=('raw', 'compressed'), read_only=True)
        self.qos_in = declare_qos(p, 'input_qos', 'best_effort', 5, 'the camera subscription (sensor data default)')
        self.qos_out = declare_qos(p, 'output_qos', 'reliable', 5, 'the published outputs')
        p.declare('map_resolution', 'grid', 'boundary/corner map size: grid = one value per ViT patch, '
                  'input = resized to the camera image', choices=MAP_RESOLUTIONS)
        p.declare('undistort', True, 'undistort each frame with camera_info before the engine when its distortion '
                  'is non-zero (plumb_bob, rational_polynomial) or equidistant; the outputs and ~/camera_info are '
                  'then in the undistorted camera with the same K (D = 0)')
        p.declare('photometric', 'none', 'photometric normalization of each frame before the engine (grayworld: '
                  'gray-world white balance + mean/std); the place map must be built with the same',
                  choices=PHOTOMETRIC_MODES)
        p.declare('verify_image_width', 240, '~/verify_image: the undistorted frame in grey at this width for '
                  'localizer_node\'s verification; 0: not published', (0, 4096), read_only=True)
        p.declare('max_input_pixels', MAX_PIXELS_DEFAULT, 'larger camera images are rejected (height*width)',
                  (1, 2 ** 31 - 1))
        self.declare_diagnostics_period(lo=0.1)
        self.hardware_id = p.declare('hardware_id', 'gplq_ros', 'hardware_id in /diagnostics', read_only=True)
        self.engine = None
        self._lock = threading.Lock()

    def configure(self) -> None:
        p = self.params
        model = p['model']
        if not model:
            raise ValueError('parameter model is empty: set it to a graph written by gplq_export')
        self.engine = load(Path(model), vocabulary_parameter(p['vocabulary']), threads=p['threads'],
                           providers=[s.strip() for s in p['providers'].split(',') if s.strip()],
                           artifact=Path(p['artifact']) if p['artifact'] else None, backend=p['backend'],
                           precision=p['precision'])
        out = self.qos_out
        self.pub_boundary = self.create_publisher(Image, '~/boundary_map', out)
        self.pub_corner_map = self.create_publisher(Image, '~/corner_map', out)
        self.pub_corners = self.create_publisher(PointCloud2, '~/corners', out)
        self.pub_descriptor = self.create_publisher(Image, '~/descriptor', out)
        self.pub_info = self.create_publisher(CameraInfo, '~/camera_info', out)
        self.pub_verify = self.create_publisher(Image, '~/verify_image', out) if p['verify_image_width'] else None
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.publishers_ = [x for x in (self.pub_boundary, self.pub_corner_map, self.pub_corners, self.pub_descriptor,
                                        self.pub_info, self.pub_verify, self.pub_diag) if x is not None]
        self.latency = LatencyWindow(300)
        self.received = self.processed = self.skipped = 0
        self.rejected = {}
        self.last_error = ''
        self.camera_info = None
        self.camera_info_error = ''
        self.undistorter = Undistorter()
        self.undistorted = self.not_undistorted = 0
        self.undistortion = 'no camera_info'     # what the last frame got (diagnostics ``undistortion``)
        self.undistort_refused = ''              # why the last frame was not undistorted ('' = it was not refused)
        self.worker = SlotWorker(self._infer, 'gplq_inference', on_error=self._fail)
        self.slot = self.worker.slot
        self.timer = self.create_timer(p['diagnostics_period'], self.publish_diagnostics)
        self.get_logger().info(
            f'{self.engine.kind} graph {model} ({self.engine.input_hw[0]}x{self.engine.input_hw[1]}, '
            f'{p["threads"]} threads, {self.engine.description}), input {self.transport}')

    def activate(self) -> None:
        # the standard qos_overrides.<topic>.subscription.* parameters (read at activation) take precedence
        # over input_qos_*, as in other ROS 2 camera consumers
        over = QoSOverridingOptions.with_default_policies()
        if self.transport == 'raw':
            sub = self.create_subscription(Image, 'image', self.on_image, self.qos_in, qos_overriding_options=over)
        else:
            sub = self.create_subscription(CompressedImage, 'image/compressed', self.on_image, self.qos_in,
                                           qos_overriding_options=over)
        info = self.create_subscription(CameraInfo, 'camera_info', self.on_camera_info, self.qos_in)
        self.inputs += [sub, info]
        self.get_logger().info(f'active: subscribed to {sub.topic_name} and {info.topic_name}')

    def release(self) -> None:
        super().release()
        self.engine = None

    def on_camera_info(self, msg: CameraInfo) -> None:
        with self._lock:
            self.camera_info = msg

    def on_image(self, msg) -> None:
        self.received += 1
        try:
            limit = self.params['max_input_pixels']
            rgb = image_to_rgb(msg, limit) if self.transport == 'raw' else compressed_to_rgb(msg, limit)
        except ImageFormatError as e:
            with self._lock:
                self.rejected[e.field] = self.rejected.get(e.field, 0) + 1
                self.last_error = f'frame {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d} rejected: {e}'
            self.get_logger().error(self.last_error)
            return
        self.slot.put((msg.header, rgb))

    def _infer(self, item) -> None:
        """Inference thread: engine and publishing failures reach ``_fail`` through the worker.
        A frame whose engine run outlived the active state gives no outputs (``frames_skipped``)."""
        header, rgb = item
        with self._lock:
            info = self.camera_info
        rgb, undistorted = self._undistort(rgb, info)
        gray = verify_frame(rgb, self.params['verify_image_width']) if self.pub_verify is not None else None
        rgb = apply_photometric(rgb, self.params['photometric'])
        t0 = time.perf_counter()
        out = self.engine(rgb)
        self.latency.add(1e3 * (time.perf_counter() - t0))
        boundary, corner_map = output_maps(out, self.params['map_resolution'])
        with self.gate:
            if not self.outputs_allowed:
                self.skipped += 1     # shutting down or deactivated meanwhile: no outputs
                return
            self._publish(header, out, boundary, corner_map, info, undistorted)
            if gray is not None:
                self.pub_verify.publish(numpy_to_image(gray, 'mono8', header))
        self.processed += 1

    def _undistort(self, rgb, info):
        """(frame, undistorted) for the engine; records what happened for the diagnostics."""
        if not self.params['undistort'] or info is None:
            self.undistortion, self.undistort_refused = 'off' if not self.params['undistort'] else 'no camera_info', ''
            return rgb, False
        try:
            rgb, undistorted = self.undistorter(rgb, info)
        except UndistortError as e:
            self.not_undistorted += 1
            if str(e) != self.undistort_refused:   # logged once per distinct problem
                self.get_logger().warning(f'frames are processed without undistortion: {e}')
            self.undistortion = self.undistort_refused = str(e)
            return rgb, False
        self.undistorted += undistorted
        self.undistortion = f'on ({info.distortion_model})' if undistorted else 'not needed (no distortion)'
        self.undistort_refused = ''
        return rgb, undistorted

    def _publish(self, header, out, boundary, corner_map, info, undistorted) -> None:
        if info is not None:
            try:
                self.pub_info.publish(scale_camera_info(info, out.image_hw, boundary.shape, header, undistorted))
                self.camera_info_error = ''
            except ImageFormatError as e:
                if str(e) != self.camera_info_error:   # logged once per distinct problem
                    self.get_logger().warning(f'camera_info not usable, no ~/camera_info: {e}')
                self.camera_info_error = str(e)
        self.pub_boundary.publish(encode_map(boundary, header))
        self.pub_corner_map.publish(encode_map(corner_map, header))
        self.pub_corners.publish(encode_corners(out.corners_px, out.corners.response, header))
        if out.descriptor is not None:
            self.pub_descriptor.publish(encode_descriptor(out.descriptor, header))

    def _fail(self, text: str) -> None:
        with self._lock:   # the worker counts its exceptions (engine_errors = worker.errors)
            self.last_error = text
        self.get_logger().error(text)

    def publish_diagnostics(self) -> None:
        with self._lock:
            rejected = dict(self.rejected)
            last_error = self.last_error
        engine_errors = self.worker.errors
        lat = self.latency.summary()
        values = {'frames_received': self.received, 'frames_processed': self.processed,
                  'frames_dropped': self.slot.dropped, 'frames_skipped': self.skipped,
                  'frames_rejected': sum(rejected.values()),
                  'engine_errors': engine_errors, 'engine_p50_ms': lat['p50_ms'], 'engine_p95_ms': lat['p95_ms'],
                  'engine_max_ms': lat['max_ms'], 'queue_depth': self.slot.pending, 'model_kind': self.engine.kind,
                  'lifecycle_state': self.state_label,
                  'camera_info': self.camera_info_error or ('received' if self.camera_info is not None else 'none'),
                  'undistortion': self.undistortion, 'frames_undistorted': self.undistorted,
                  'frames_not_undistorted': self.not_undistorted,
                  **{f'rejected_{k}': v for k, v in sorted(rejected.items())}, 'last_error': last_error}
        diag.publish(self, self.pub_diag, feature_status(self.processed, engine_errors, rejected, last_error,
                                                         self.undistort_refused), values, self.worker)


def main(argv=None) -> int:
    return run_node(FeatureNode, argv)


if __name__ == '__main__':
    sys.exit(main())
