"""localizer_node: the feature node's place descriptor -> a position in the place map.

Subscribes ``descriptor`` (sensor_msgs/Image 32FC1, the feature node's ``~/descriptor``) and,
with ``refine``, ``boundary_map`` (its ``~/boundary_map``; remap both), joined by header stamp
(``onboard.join.StampJoin``: at most ``pending_stamps`` wait for their partner, the oldest
beyond that counted as ``no_fix_unpaired``). The callbacks only join: a joined frame goes to a
newest-only slot (a frame replaced before the localizer took it: ``frames_dropped``) and a
localizer thread (``onboard.slot.SlotWorker``) runs ``onboard.localize.Localizer`` on it, so
a search never delays the diagnostics timer. For every frame, the localizer retrieves the
top-k tiles of the map (``map``: a gplq_map file), refines the position, yaw and height by
matching the boundary map against the map's boundary orthomap, and runs the measurement
through its Kalman filter. When the frame gives a fix it publishes, with the descriptor's
header stamp (the camera frame's stamp):

* ``~/pose``: geometry_msgs/PoseWithCovarianceStamped in ``map_frame``. Position x, y (m,
  REP 103: x east, y north, origin the orthophoto's top-left corner), z = 0 (not measured),
  orientation = yaw of the camera image's x axis (u, right) from east, roll = pitch = 0 (not
  measured). Covariance 6x6 row-major (x, y, z, roll, pitch, yaw): the filter's x/y block
  and the match's yaw variance; z, roll and pitch carry ``unmeasured_variance`` (large, so a
  fusing filter must not use them; configure it to fuse x, y, yaw only).
* ``~/fix``: sensor_msgs/NavSatFix when the map is geo-referenced: latitude/longitude
  (WGS-84) of the position, altitude NaN (not measured), ENU position covariance (east/north
  block from the filter, up = ``unmeasured_variance``), COVARIANCE_TYPE_KNOWN.

No fix (map ambiguous, filter starting, a jump or gate rejection, lost) = no message and a
counter per reason; a malformed input (``no_fix_malformed``) and a numerical failure of the
filter (``no_fix_filter_fault``; the filter keeps its state from before the frame) are
counted apart. ``/diagnostics`` every ``diagnostics_period`` s (``onboard.status.localizer_status``):
``gplq_ros: <node>``, OK while the last descriptor gave a fix, WARN otherwise (with the
reason) or when no descriptor came for ``stale_after_s``, ERROR on a malformed descriptor, a
filter fault, a localizer-thread failure or a configure failure. The localizer settings
(``top_k`` ... ``recheck_confirm``, ``refine``) are ``onboard.localize.LocalizerConfig``'s
fields, declared from it. A managed node (``nodes.lifecycle``): the map is loaded in
on_configure; ``autostart`` default true.
"""
import sys
import threading
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from sensor_msgs.msg import Image, NavSatFix
from std_msgs.msg import Header

from gplq_ros.nodes import diag
from gplq_ros.nodes.lifecycle import ManagedNode
from gplq_ros.nodes.params import declare_qos
from gplq_ros.nodes.run import run_node
from gplq_ros.onboard.image_codec import ImageFormatError
from gplq_ros.onboard.join import JoinConfig, StampJoin
from gplq_ros.onboard.localize import FilterFault, Localizer, LocalizerConfig
from gplq_ros.onboard.messages import decode_descriptor, decode_map, encode_fix, encode_pose
from gplq_ros.onboard.paths import vocabulary_parameter
from gplq_ros.onboard.pipeline import single_thread_blas
from gplq_ros.onboard.placemap import MapError, PlaceMap
from gplq_ros.onboard.slot import SlotWorker
from gplq_ros.onboard.stats import LatencyWindow
from gplq_ros.onboard.status import localizer_status
from gplq_ros.onboard.vocabulary import Vocabulary


class LocalizerNode(ManagedNode):
    NODE_NAME = 'localizer_node'
    RENAMED = {'period': 'diagnostics_period'}

    def declare(self) -> None:
        p = self.params
        p.declare('map', '', 'place map (gplq_map); required', read_only=True)
        p.declare('vocabulary', '', 'the VLAD vocabulary of the feature node (checked against the map); empty: the '
                  '$GPLQ_HOME default', read_only=True)
        self.map_frame = p.declare('map_frame', 'map', 'frame_id of the published pose', read_only=True)
        p.declare_settings(LocalizerConfig)   # top_k ... recheck_confirm, refine: one home, onboard.localize
        p.declare_settings(JoinConfig)        # pending_stamps
        self.unmeasured = p.declare('unmeasured_variance', 1e6, 'variance of the axes the localizer does not '
                                    'measure (z, roll, pitch; NavSatFix up)', (1.0, 1e12), read_only=True)
        p.declare('stale_after_s', 2.0, 'WARN when no descriptor for this long', (0.1, 3600.0))
        self.declare_diagnostics_period()
        self.hardware_id = p.declare('hardware_id', 'gplq_ros', 'hardware_id in /diagnostics', read_only=True)
        self.qos_in = declare_qos(p, 'input_qos', 'reliable', 10, 'the descriptor subscription')
        self.localizer = None
        self._lock = threading.Lock()

    def configure(self) -> None:
        p = self.params
        if not p['map']:
            raise ValueError('parameter map is empty: set it to a place map from gplq_map')
        pmap = PlaceMap.load(Path(p['map']))
        vocab_path = vocabulary_parameter(p['vocabulary'] or '')
        if vocab_path is None:
            raise ValueError('parameter vocabulary="none": the localizer needs the descriptor\'s vocabulary')
        vocab = Vocabulary.load(vocab_path)
        pmap.check_vocabulary(vocab.centers, f'parameter vocabulary={str(vocab_path)!r}')
        if vocab.meta.weights_sha256 != pmap.meta.weights_sha256:
            raise MapError(f'parameter map={p["map"]!r}: built for other backbone weights than the vocabulary')
        cfg = p.settings(LocalizerConfig)
        single_thread_blas()      # a few ms of numpy per frame beside the feature node's graph runtime
        self.localizer = Localizer(pmap, cfg)
        self.georef = pmap.georef
        self.counts = {'ambiguous': 0, 'initialising': 0, 'jump': 0, 'gate': 0, 'lost': 0, 'malformed': 0,
                       'filter_fault': 0}
        self.join = StampJoin(('descriptor', 'boundary') if cfg.refine else ('descriptor',), p.settings(JoinConfig))
        self.last = None                 # the last Estimate
        self.malformed = self.filter_fault = ''    # since the last status
        self.last_input = None
        self.skipped = 0
        self.query_ms = LatencyWindow(300)
        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, '~/pose', 10)
        self.pub_fix = self.create_publisher(NavSatFix, '~/fix', 10) if self.georef else None
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.publishers_ = [x for x in (self.pub_pose, self.pub_fix, self.pub_diag) if x is not None]
        self.worker = SlotWorker(self._localize, 'gplq_localizer', on_error=self._fail)
        self.timer = self.create_timer(p['diagnostics_period'], self.publish_status)
        self.get_logger().info(f'map {Path(p["map"]).name}: {pmap.meta.n_tiles} tiles of {pmap.meta.source_image}'
                               + (f', geo-referenced ({self.georef.crs})' if self.georef else ', not geo-referenced'))

    def activate(self) -> None:
        self.inputs.append(self.create_subscription(Image, 'descriptor', lambda m: self.on_input(m, 'descriptor'),
                                                    self.qos_in))
        if self.params['refine']:
            self.inputs.append(self.create_subscription(Image, 'boundary_map', lambda m: self.on_input(m, 'boundary'),
                                                        self.qos_in))

    def deactivate(self) -> None:
        super().deactivate()
        self.join.clear()

    def release(self) -> None:
        super().release()
        self.localizer = None

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def on_input(self, msg: Image, kind: str) -> None:
        """Joins descriptor and boundary map by stamp (with ``refine``) and hands the frame to the
        localizer thread; returns at once."""
        self.last_input = self.now_s()
        got = self.join.add((msg.header.stamp.sec, msg.header.stamp.nanosec), kind, msg)
        if got is not None:
            self.worker.slot.put((got['descriptor'], got.get('boundary')))

    def _localize(self, item) -> None:
        """Localizer thread: decode, localize, publish. A malformed input and a filter fault are
        counted apart (the filter keeps its state on either); other failures reach ``_fail``."""
        msg, boundary_msg = item
        stamp = msg.header.stamp
        try:
            d = decode_descriptor(msg)
            b = decode_map(boundary_msg) if boundary_msg is not None else None
            t0 = time.perf_counter()
            est = self.localizer.update(d, stamp.sec + stamp.nanosec * 1e-9, b)
            self.query_ms.add((time.perf_counter() - t0) * 1e3)
        except FilterFault as e:
            with self._lock:
                self.counts['filter_fault'] += 1
                self.filter_fault = str(e)
            self.get_logger().error(f'filter fault, frame skipped, filter state kept: {e}')
            return
        except (ImageFormatError, ValueError) as e:     # MapError is a ValueError
            with self._lock:
                self.counts['malformed'] += 1
                self.malformed = str(e)
            self.get_logger().error(f'descriptor rejected: {e}')
            return
        with self.gate:
            if not self.outputs_allowed:
                self.skipped += 1       # deactivated meanwhile: no outputs
                return
            self.last = est
            if not est.fix:
                with self._lock:
                    self.counts[est.reason] += 1
                return
            self.publish_fix(stamp, est)

    def _fail(self, text: str) -> None:
        self.get_logger().error(text)

    def publish_fix(self, stamp, est) -> None:
        header = Header(stamp=stamp, frame_id=self.map_frame)
        self.pub_pose.publish(encode_pose(est.xy, est.cov, est.measurement.yaw, est.measurement.yaw_var,
                                          self.unmeasured, header))
        if self.pub_fix is not None:
            lat, lon = self.georef.to_wgs84(float(est.xy[0]), float(est.xy[1]))
            self.pub_fix.publish(encode_fix(lat, lon, est.cov, self.unmeasured, header))

    def publish_status(self) -> None:
        loc = self.localizer
        last = self.last
        idle = None if self.last_input is None else self.now_s() - self.last_input
        with self._lock:
            counts = dict(self.counts, unpaired=self.join.unpaired)
            malformed, fault = self.malformed, self.filter_fault
            self.malformed = self.filter_fault = ''
        status = localizer_status(None if last is None else ('' if last.fix else last.reason), idle,
                                  self.params['stale_after_s'], malformed, fault)
        values = dict(frames=loc.frames, fixes=loc.fixes, fix_rate=loc.fixes / max(loc.frames, 1),
                      last_score=last.measurement.score if last else None,
                      last_margin=last.measurement.margin if last else None,
                      last_ncc=last.measurement.ncc if last else None,
                      map_tiles=loc.map.meta.n_tiles, recheck_restarts=loc.recheck_restarts,
                      query_p50_ms=self.query_ms.summary()['p50_ms'],
                      frames_dropped=self.worker.slot.dropped, frames_skipped=self.skipped,
                      lifecycle_state=self.state_label,
                      **{f'no_fix_{k}': v for k, v in counts.items()})
        diag.publish(self, self.pub_diag, status, values, self.worker)


def main(argv=None) -> int:
    return run_node(LocalizerNode, argv)


if __name__ == '__main__':
    sys.exit(main())
