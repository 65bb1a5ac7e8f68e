"""localizer_node: the feature node's place descriptor -> a position in the place map.

Subscribes ``descriptor`` (sensor_msgs/Image 32FC1, the feature node's ``~/descriptor``),
with ``refine``, ``boundary_map`` (its ``~/boundary_map``) and, with ``verify`` and a map that has
the orthophoto layer (gplq_map version 2), ``verify_image`` (its ``~/verify_image``, mono8; remap
them), joined by header stamp
(``onboard.join.StampJoin``: at most ``pending_stamps`` wait for their partner, the oldest
beyond that counted as ``no_fix_unpaired``). The callbacks only join: a joined frame goes to a
newest-only slot (a frame replaced before the localizer took it: ``frames_dropped``) and a
localizer thread (``onboard.slot.SlotWorker``) runs ``onboard.localize.Localizer`` on it, so
a search never delays the diagnostics timer. For every frame, the localizer retrieves the
top-k tiles of the map (``map``: a gplq_map file), verifies the retrieved places by registering
the frame to the map's orthophoto layer with keypoints (``onboard.verify``; without the image or
the layer: refines by matching the boundary map against the map's boundary orthomap), and runs
the measurement
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

Integrity before availability (``onboard.localize``: covariance from the match's evidence,
every frame's independent measurement confirms or contradicts the track): no fix (``weak``
evidence, ``ambiguous`` map, track ``initialising``, a ``jump`` or ``gate`` rejection, a
``conflict`` with a better independent match, ``unconfirmed`` for ``confirm_window_s``,
``uncertain`` above ``max_fix_sigma_m``, ``lost``) = no message and a counter per reason
(``no_fix_<reason>``; ``last_sigma_m`` and ``last_independent`` say what the last frame's
evidence was; ``verify_*``: the verification's map keypoints, kept / detected by a frame / failed
in the background); a malformed input (``no_fix_malformed``) and a numerical failure of the
filter (``no_fix_filter_fault``; the filter keeps its state from before the frame) are
counted apart. ``/diagnostics`` every ``diagnostics_period`` s (``onboard.status.localizer_status``):
``gplq_ros: <node>``, OK while the last descriptor gave a fix, WARN otherwise (with the
reason) or when no descriptor came for ``stale_after_s``, ERROR on a malformed descriptor, a
filter fault, a localizer-thread failure or a configure failure. The localizer settings
(``top_k`` ... ``height_tolerance``, ``refine``) are ``onboard.localize.LocalizerConfig``'s
fields, declared from it. A managed node (``nodes.lifecycle``): the map is loaded in
on_configure; ``autostart`` default true.

Optional inputs (``onboard.aiding.AidingConfig``, both off by default: then neither topic is
subscribed and every frame is localized from the camera alone). The callbacks only check a
message and store it in a stamped buffer; the localizer thread looks the value up at the
frame's stamp and passes it to ``Localizer.update`` (``odom=``, ``height_m=``):

* ``odom`` (``use_odometry``): nav_msgs/Odometry from VIO or the autopilot (e.g. MAVROS
  ``local_position/odom``). ``pose.pose`` is the pose of ``child_frame_id`` (the vehicle, any
  body frame) in ``header.frame_id`` (the odometry frame: REP 103/105 ``odom``, x forward/east,
  z up; an NED frame must be converted first); only position x, y and the yaw of the
  orientation are used, interpolated to the frame's stamp between the samples around it
  (``odom_max_gap_s``; the newest held for at most ``input_max_age_s``). The localizer uses the
  change of that pose between frames as its motion prediction, rotated into ``map`` by an
  offset it estimates itself, so neither the odometry frame's heading nor a constant camera
  mounting yaw needs configuring.
* ``height`` (``use_height``): height above ground in metres, along the camera's axis (about
  vertical for a nadir camera): ``height_type: range``: sensor_msgs/Range of a downward
  rangefinder (``range``; readings outside [``min_range``, ``max_range``], +-inf or NaN
  refused); ``altitude``: std_msgs/Float64 (e.g. MAVROS ``global_position/rel_alt``; it has no
  stamp, so its receipt time is used; NaN, inf and values <= 0 refused). The samples within
  ``input_max_age_s`` of the frame's stamp are interpolated; the localizer narrows the
  refinement's height search around it.

QoS of both: ``aiding_qos_reliability`` (``best_effort``, which also receives from reliable
publishers) and ``aiding_qos_depth``. A message refused is logged (at most every 5 s) and
counted (``odom_rejected``, ``height_rejected``, with the last reason); a frame whose stamp
finds no usable sample is localized without it and counted (``odom_missing``,
``height_missing``, with the reason: empty, before, gap, stale), which makes an OK status
WARN for that period. Further values: ``odom_used``, ``height_used``, ``last_height_m`` (the
height given to the localizer for the last frame that had one).
"""
import sys
import threading
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import Image, NavSatFix, Range
from std_msgs.msg import Float64, Header

from gplq_ros.nodes import diag
from gplq_ros.nodes.lifecycle import ManagedNode
from gplq_ros.nodes.params import declare_qos
from gplq_ros.nodes.run import run_node
from gplq_ros.onboard.aiding import (AidingConfig, HeightBuffer, PoseBuffer, aiding_status, altitude_height,
                                     odometry_pose, range_height)
from gplq_ros.onboard.image_codec import ImageFormatError, image_to_rgb
from gplq_ros.onboard.join import JoinConfig, StampJoin
from gplq_ros.onboard.localize import FilterFault, Localizer, LocalizerConfig, OdomPose
from gplq_ros.onboard.messages import decode_descriptor, decode_map, encode_fix, encode_pose
from gplq_ros.onboard.paths import vocabulary_parameter
from gplq_ros.onboard.pipeline import single_thread_blas
from gplq_ros.onboard import mapindex
from gplq_ros.onboard.mapstore import MapLoadConfig, ShardedMap, open_map
from gplq_ros.onboard.placemap import MapError
from gplq_ros.onboard.slot import SlotWorker
from gplq_ros.onboard.stats import LatencyWindow
from gplq_ros.onboard.status import localizer_status
from gplq_ros.onboard.verify import VerifyConfig
from gplq_ros.onboard.vocabulary import Vocabulary


class LocalizerNode(ManagedNode):
    NODE_NAME = 'localizer_node'
    RENAMED = {'period': 'diagnostics_period'}

    def declare(self) -> None:
        p = self.params
        p.declare('map', '', 'place map (gplq_map): a .safetensors file or a sharded map folder; required',
                  read_only=True)
        p.declare('vocabulary', '', 'the VLAD vocabulary of the feature node (checked against the map); empty: the '
                  '$GPLQ_HOME default', read_only=True)
        self.map_frame = p.declare('map_frame', 'map', 'frame_id of the published pose', read_only=True)
        p.declare_settings(LocalizerConfig)   # top_k ... height_tolerance, refine: one home, onboard.localize
        p.declare_settings(VerifyConfig)      # verify, verify_*: onboard.verify
        p.declare_settings(JoinConfig)        # pending_stamps
        p.declare_settings(MapLoadConfig)     # map_memory_mb, map_cell_m: onboard.mapstore
        p.declare_settings(AidingConfig)      # use_odometry, use_height, ...: the optional inputs, onboard.aiding
        self.unmeasured = p.declare('unmeasured_variance', 1e6, 'variance of the axes the localizer does not '
                                    'measure (z, roll, pitch; NavSatFix up)', (1.0, 1e12), read_only=True)
        p.declare('stale_after_s', 2.0, 'WARN when no descriptor for this long', (0.1, 3600.0))
        self.declare_diagnostics_period()
        self.hardware_id = p.declare('hardware_id', 'gplq_ros', 'hardware_id in /diagnostics', read_only=True)
        self.qos_in = declare_qos(p, 'input_qos', 'reliable', 10, 'the descriptor subscription')
        self.qos_aid = declare_qos(p, 'aiding_qos', 'best_effort', 10, 'the odom and height subscriptions')
        self.localizer = None
        self.odom = self.height = None     # the optional inputs' buffers (configure makes the enabled ones)
        self._lock = threading.Lock()

    def configure(self) -> None:
        p = self.params
        if not p['map']:
            raise ValueError('parameter map is empty: set it to a place map from gplq_map')
        pmap = open_map(Path(p['map']), p.settings(MapLoadConfig))
        vocab_path = vocabulary_parameter(p['vocabulary'] or '')
        if vocab_path is None:
            raise ValueError('parameter vocabulary="none": the localizer needs the descriptor\'s vocabulary')
        vocab = Vocabulary.load(vocab_path)
        pmap.check_vocabulary(vocab.centers, f'parameter vocabulary={str(vocab_path)!r}')
        if vocab.meta.weights_sha256 != pmap.meta.weights_sha256:
            raise MapError(f'parameter map={p["map"]!r}: built for other backbone weights than the vocabulary')
        cfg = p.settings(LocalizerConfig)
        single_thread_blas()      # a few ms of numpy per frame beside the feature node's graph runtime
        if isinstance(pmap, ShardedMap):
            mapindex.set_threads(1)      # its global search too: one thread
        self.localizer = Localizer(pmap, cfg, p.settings(VerifyConfig))
        if p['verify'] and self.localizer.verifier is None:
            self.get_logger().warning(f'verify is true but map {Path(p["map"]).name} has no orthophoto layer (build it '
                                      'again with this gplq_map): the boundary-map refinement only')
        warm = self.localizer.warm()
        if warm:
            self.get_logger().info(f'detecting the map keypoints of {warm} orthophoto layer blocks in the background')
        self.georef = pmap.georef
        self.counts = dict.fromkeys(Localizer.REASONS + ('malformed', 'filter_fault'), 0)
        need = ('descriptor',) + (('boundary',) if cfg.refine else ()) + \
            (('image',) if self.localizer.verifier is not None else ())
        self.join = StampJoin(need, p.settings(JoinConfig))
        self.last = None                 # the last Estimate
        self.malformed = self.filter_fault = ''    # since the last status
        self.last_input = None
        self.skipped = 0
        aid = self.aid = p.settings(AidingConfig)
        self.odom = PoseBuffer(aid.input_buffer, aid.odom_max_gap_s, aid.input_max_age_s) \
            if aid.use_odometry else None
        self.height = HeightBuffer(aid.input_buffer, aid.input_max_age_s) if aid.use_height else None
        self.rejected = {'odom': 0, 'height': 0}        # messages refused (bad values)
        self.rejected_last = {'odom': '', 'height': ''}
        self.missing_seen = {'odom': 0, 'height': 0}    # missing lookups already reported in a status
        self.last_height = None
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
        if 'image' in self.join.need:
            self.inputs.append(self.create_subscription(Image, 'verify_image', lambda m: self.on_input(m, 'image'),
                                                        self.qos_in))
        if self.odom is not None:
            self.inputs.append(self.create_subscription(Odometry, 'odom', self.on_odom, self.qos_aid))
        if self.height is not None:
            kind = Range if self.aid.height_type == 'range' else Float64
            self.inputs.append(self.create_subscription(kind, 'height', self.on_height, self.qos_aid))

    def deactivate(self) -> None:
        super().deactivate()
        self.join.clear()

    def release(self) -> None:
        super().release()
        if self.localizer is not None:
            self.localizer.close()
        self.localizer = None

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def on_input(self, msg: Image, kind: str) -> None:
        """Joins descriptor and boundary map by stamp (with ``refine``) and hands the frame to the
        localizer thread; returns at once."""
        self.last_input = self.now_s()
        got = self.join.add((msg.header.stamp.sec, msg.header.stamp.nanosec), kind, msg)
        if got is not None:
            self.worker.slot.put((got['descriptor'], got.get('boundary'), got.get('image')))

    def on_odom(self, msg: Odometry) -> None:
        """Stores the pose (at its stamp) for the localizer thread; a bad message is counted."""
        try:
            self.odom.add(*odometry_pose(msg))
        except ValueError as e:
            self._rejected('odom', e)

    def on_height(self, msg) -> None:
        """Stores the height (Range: at its stamp; Float64: at the receipt time); a bad message is
        counted."""
        try:
            if isinstance(msg, Range):
                self.height.add(*range_height(msg))
            else:
                self.height.add(self.now_s(), altitude_height(msg.data))
        except ValueError as e:
            self._rejected('height', e)

    def _rejected(self, what: str, e: ValueError) -> None:
        with self._lock:
            self.rejected[what] += 1
            self.rejected_last[what] = str(e)
        text = f'{what} message refused: {e}'
        if what == 'odom':      # one throttle per input (rclpy throttles per call site)
            self.get_logger().warning(text, throttle_duration_sec=5.0)
        else:
            self.get_logger().warning(text, throttle_duration_sec=5.0)

    def _aiding(self, t: float) -> dict:
        """The optional inputs at the frame's stamp ``t``, as ``Localizer.update``'s keywords (only
        those enabled; None = enabled but nothing usable at ``t``, counted by the buffer)."""
        kw = {}
        if self.odom is not None:
            pose = self.odom.at(t)
            kw['odom'] = None if pose is None else OdomPose(pose.x, pose.y, pose.yaw)
            if pose is None:      # one throttle per input: rclpy throttles per call site
                self.get_logger().warning(f'frame {t:.3f}: no odometry, localized without it: '
                                          f'{self.odom.last_missing}', throttle_duration_sec=5.0)
        if self.height is not None:
            h = kw['height_m'] = self.height.at(t)
            if h is None:
                self.get_logger().warning(f'frame {t:.3f}: no height, localized without it: '
                                          f'{self.height.last_missing}', throttle_duration_sec=5.0)
            else:
                self.last_height = h
        return kw

    def _localize(self, item) -> None:
        """Localizer thread: decode, localize, publish. A malformed input and a filter fault are
        counted apart (the filter keeps its state on either); other failures reach ``_fail``."""
        msg, boundary_msg, image_msg = item
        stamp = msg.header.stamp
        try:
            d = decode_descriptor(msg)
            b = decode_map(boundary_msg) if boundary_msg is not None else None
            img = image_to_rgb(image_msg) if image_msg is not None else None
            t = stamp.sec + stamp.nanosec * 1e-9
            t0 = time.perf_counter()
            kw = dict(self._aiding(t), **({'image': img} if img is not None else {}))
            est = self.localizer.update(d, t, b, **kw)
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
        status, aiding = self.aiding_values(status)
        values = dict(frames=loc.frames, fixes=loc.fixes, fixes_coasted=loc.coasted,
                      fix_rate=loc.fixes / max(loc.frames, 1),
                      last_score=last.measurement.score if last else None,
                      last_margin=last.measurement.margin if last else None,
                      last_ncc=last.measurement.ncc if last else None,
                      last_inliers=last.measurement.inliers if last else None,
                      last_sigma_m=last.measurement.sigma if last else None,
                      last_independent=(last.independent.weak or ('shared' if last.independent.shared else 'usable'))
                      if last and last.independent else None,
                      map_tiles=loc.map.meta.n_tiles, track_drops=loc.track_drops,
                      map_resident_mb=loc.map.resident_bytes() / 2 ** 20,
                      map_shards_loaded=loc.map.stats['shards_loaded'],
                      map_shards_released=loc.map.stats['shards_released'],
                      query_p50_ms=self.query_ms.summary()['p50_ms'],
                      frames_dropped=self.worker.slot.dropped, frames_skipped=self.skipped,
                      lifecycle_state=self.state_label,
                      **{f'no_fix_{k}': v for k, v in counts.items()}, **aiding, **self.verify_values(loc))
        diag.publish(self, self.pub_diag, status, values, self.worker)

    @staticmethod
    def verify_values(loc) -> dict:
        """The verification's map keypoints (``onboard.verify.Verifier.stats``): blocks kept, detected by a
        frame (not ready in the background), background detections that failed and the last failure."""
        v = loc.verifier
        if v is None:
            return {}
        st = v.stats
        return dict(verify_blocks_kept=len(v.blocks), verify_blocks_foreground=st['blocks_foreground'],
                    verify_prefetch_failed=st['prefetch_failed'], verify_prefetch_error=st['prefetch_error'])

    def aiding_values(self, status):
        """The diagnostics values of the enabled optional inputs, and the status with them (WARN
        instead of OK when one was missing for frames since the last status)."""
        values, new_missing, why = {}, {}, {}
        for name, buf in (('odom', self.odom), ('height', self.height)):
            if buf is None:
                continue
            missing = buf.missing_total
            with self._lock:
                rejected, rejected_last = self.rejected[name], self.rejected_last[name]
            new_missing[name], why[name] = missing - self.missing_seen[name], buf.last_missing
            self.missing_seen[name] = missing
            values.update({f'{name}_used': buf.used, f'{name}_held': buf.held, f'{name}_missing': missing,
                           f'{name}_missing_last': buf.last_missing, f'{name}_rejected': rejected,
                           f'{name}_rejected_last': rejected_last, f'{name}_buffered': len(buf)})
        if self.height is not None:
            values['last_height_m'] = self.last_height
        return aiding_status(status, new_missing, why), values


def main(argv=None) -> int:
    return run_node(LocalizerNode, argv)


if __name__ == '__main__':
    sys.exit(main())
