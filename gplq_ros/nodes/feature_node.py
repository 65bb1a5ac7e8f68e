"""feature_node: camera image -> boundary map, corner map, corners, place descriptor.

Subscribes ``image`` (sensor_msgs/Image) or ``image/compressed`` (CompressedImage, with
``transport: compressed``); remap it to the camera topic. Decoding and validation run in
the subscription callback (a malformed message is logged once with the field and value,
counted, and skipped); the decoded frame goes to a newest-only slot, and an inference
thread runs the onboard engine on the newest frame and publishes, with the input header
copied, ``~/boundary_map``, ``~/corner_map``, ``~/corners`` and ``~/descriptor`` (layouts:
``gplq_ros.onboard.layout``). Frames replaced before inference are counted as dropped.
Counters and engine latency go to ``/diagnostics`` every ``diagnostics_period`` seconds.
"""
import sys
import threading
import time
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField

from ..onboard.drift import Level
from ..onboard.layout import CORNER_DTYPE, CORNER_FIELDS, FLOAT32
from ..onboard.stats import LatencyWindow
from ..onboard.slot import SlotWorker
from . import diag
from .image_codec import ImageFormatError, compressed_to_rgb, image_to_rgb, numpy_to_image
from .params import Params, declare_qos
from .run import run_node


class FeatureNode(Node):
    NODE_NAME = 'feature_node'

    def __init__(self, **kw):
        super().__init__('feature_node', **kw)
        p = self.params = Params(self)
        model = p.declare('model', '', 'ONNX graph written by gplq_export (GPLQ or FP32); required',
                          read_only=True)
        artifact = p.declare('artifact', '', 'GPLQ artifact holding the packed 4-bit weights of a packed graph; '
                             'empty: the file the graph names, next to it', read_only=True)
        vocab = p.declare('vocabulary', '', 'VLAD vocabulary (gplq_vocab); empty: $GPLQ_HOME/vocab default; '
                          '"none": publish no descriptor', read_only=True)
        threads = p.declare('threads', 2, 'ONNX Runtime intra-op threads', (1, 64), read_only=True)
        providers = p.declare('providers', 'CPUExecutionProvider', 'comma-separated ONNX Runtime execution '
                              'providers, in order of preference (e.g. CUDAExecutionProvider,CPUExecutionProvider)',
                              read_only=True)
        self.transport = p.declare('transport', 'raw', 'input transport: raw subscribes image (Image), '
                                   'compressed subscribes image/compressed (CompressedImage)',
                                   choices=('raw', 'compressed'), read_only=True)
        qos_in = declare_qos(p, 'input_qos', 'best_effort', 5, 'the camera subscription (sensor data default)')
        qos_out = declare_qos(p, 'output_qos', 'reliable', 5, 'the published outputs')
        p.declare('map_resolution', 'grid', 'boundary/corner map size: grid = one value per ViT patch, '
                  'input = resized to the camera image', choices=('grid', 'input'))
        p.declare('max_input_pixels', 4096 * 4096, 'larger camera images are rejected (height*width)',
                  (1, 2 ** 31 - 1))
        period = p.declare('diagnostics_period', 1.0, 'seconds between /diagnostics messages', (0.1, 60.0),
                           read_only=True)
        self.hardware_id = p.declare('hardware_id', 'gplq_ros', 'hardware_id in /diagnostics', read_only=True)

        from ..paths import vocabulary_parameter
        from ..runtime.engine import load   # onnxruntime + numpy only
        if not model:
            raise ValueError('parameter model is empty: set it to a graph written by gplq_export')
        self.engine = load(Path(model), vocabulary_parameter(vocab), threads=threads,
                           providers=[s.strip() for s in providers.split(',') if s.strip()],
                           artifact=Path(artifact) if artifact else None)
        self.pub_boundary = self.create_publisher(Image, '~/boundary_map', qos_out)
        self.pub_corner_map = self.create_publisher(Image, '~/corner_map', qos_out)
        self.pub_corners = self.create_publisher(PointCloud2, '~/corners', qos_out)
        self.pub_descriptor = self.create_publisher(Image, '~/descriptor', qos_out)
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        if self.transport == 'raw':
            self.sub = self.create_subscription(Image, 'image', self.on_image, qos_in)
        else:
            self.sub = self.create_subscription(CompressedImage, 'image/compressed', self.on_image, qos_in)
        self.latency = LatencyWindow(300)
        self.received = self.processed = self.engine_errors = 0
        self.rejected = {}
        self.last_error = ''
        self._lock = threading.Lock()
        self.worker = SlotWorker(self._infer, 'gplq_inference')
        self.slot = self.worker.slot
        self.create_timer(period, self.publish_diagnostics)
        self.get_logger().info(
            f'{self.engine.kind} graph {model} ({self.engine.input_hw[0]}x{self.engine.input_hw[1]}, '
            f'{threads} threads, {self.engine.session.get_providers()[0]}), subscribed to '
            f'{self.sub.topic_name} ({self.transport})')

    # -- input -----------------------------------------------------------------------
    def on_image(self, msg) -> None:
        self.received += 1
        try:
            limit = self.params['max_input_pixels']
            rgb = image_to_rgb(msg, limit) if self.transport == 'raw' else compressed_to_rgb(msg, limit)
        except ImageFormatError as e:
            self._reject(e.field, f'frame {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d} rejected: {e}')
            return
        self.slot.put((msg.header, rgb))

    def _reject(self, field: str, text: str) -> None:
        with self._lock:
            self.rejected[field] = self.rejected.get(field, 0) + 1
            self.last_error = text
        self.get_logger().error(text)

    # -- inference thread ---------------------------------------------------------------
    def _infer(self, item):
        header, rgb = item
        t0 = time.perf_counter()
        try:
            out = self.engine(rgb)
        except Exception as e:  # ORT runtime failures: log, count, keep serving frames
            self._fail(f'inference failed: {type(e).__name__}: {str(e)[:300]}')
            return True
        self.latency.add(1e3 * (time.perf_counter() - t0))
        try:
            self.publish(header, out)
        except Exception as e:  # rclpy raises RCLError once the context is shut down
            if not self.context.ok():
                return False    # shutting down (Ctrl-C): nothing left to publish to
            self._fail(f'publish failed: {type(e).__name__}: {str(e)[:300]}')
            return True
        self.processed += 1
        return True

    def _fail(self, text: str) -> None:
        with self._lock:
            self.engine_errors += 1
            self.last_error = text
        self.get_logger().error(text)

    def publish(self, header, out) -> None:
        full = self.params['map_resolution'] == 'input'
        boundary = out.boundary_full if full else out.boundary
        harris = out.harris
        if full:
            import cv2
            harris = cv2.resize(harris, (out.image_hw[1], out.image_hw[0]), interpolation=cv2.INTER_LINEAR)
        self.pub_boundary.publish(numpy_to_image(np.ascontiguousarray(boundary, np.float32), '32FC1', header))
        self.pub_corner_map.publish(numpy_to_image(np.ascontiguousarray(harris, np.float32), '32FC1', header))
        rec = np.zeros(len(out.corners_px), CORNER_DTYPE)
        if len(rec):
            rec['u'], rec['v'] = out.corners_px[:, 0], out.corners_px[:, 1]
            rec['response'] = out.corners.response
        cloud = PointCloud2(header=header, height=1, width=len(rec), is_bigendian=False,
                            point_step=CORNER_DTYPE.itemsize, row_step=CORNER_DTYPE.itemsize * len(rec),
                            is_dense=True,
                            fields=[PointField(name=n, offset=4 * i, datatype=FLOAT32, count=1)
                                    for i, n in enumerate(CORNER_FIELDS)])
        cloud.data = rec.tobytes()
        self.pub_corners.publish(cloud)
        if out.descriptor is not None:
            self.pub_descriptor.publish(numpy_to_image(out.descriptor.reshape(1, -1).astype(np.float32), '32FC1',
                                                       header))

    # -- diagnostics ------------------------------------------------------------------------
    def publish_diagnostics(self) -> None:
        with self._lock:
            rejected = dict(self.rejected)
            last_error, engine_errors = self.last_error, self.engine_errors
        lat = self.latency.summary()
        level = Level.ERROR if engine_errors and not self.processed else \
            Level.WARN if (rejected or engine_errors) else Level.OK
        msg = 'running' if level == Level.OK else (last_error or 'errors')
        values = {'frames_received': self.received, 'frames_processed': self.processed,
                  'frames_dropped': self.slot.dropped, 'frames_rejected': sum(rejected.values()),
                  'engine_errors': engine_errors, 'engine_p50_ms': lat['p50_ms'], 'engine_p95_ms': lat['p95_ms'],
                  'engine_max_ms': lat['max_ms'], 'queue_depth': self.slot.pending, 'model_kind': self.engine.kind,
                  **{f'rejected_{k}': v for k, v in sorted(rejected.items())}, 'last_error': last_error}
        diag.publish(self, self.pub_diag, level, msg, values)

    def destroy_node(self):
        self.worker.stop()
        return super().destroy_node()


def main(argv=None) -> int:
    return run_node(FeatureNode, argv)


if __name__ == '__main__':
    sys.exit(main())
