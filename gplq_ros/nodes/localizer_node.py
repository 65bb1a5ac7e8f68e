"""localizer_node: the feature node's place descriptor -> a position in the place map.

Subscribes ``descriptor`` (sensor_msgs/Image 32FC1, the feature node's ``~/descriptor``) and,
with ``refine``, ``boundary_map`` (its ``~/boundary_map``; remap both), joined by header stamp.
For every frame, ``onboard.localize.Localizer`` retrieves the top-k tiles of the map (``map``:
a gplq_map file), refines the position, yaw and height by matching the boundary map against
the map's boundary orthomap, and runs the measurement through its Kalman filter. When the
frame gives a fix it publishes, with the descriptor's header stamp (the camera frame's stamp):

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
counter per reason. ``/diagnostics`` every ``period`` s: ``gplq_ros: <node>``, OK while the
last descriptor gave a fix, WARN otherwise (with the reason) or when no descriptor came for
``stale_after_s``, ERROR on a malformed descriptor or a configure failure. A managed node
(``nodes.lifecycle``): the map is loaded in on_configure; ``autostart`` default true.
"""
import sys
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
from gplq_ros.onboard.localize import Localizer, LocalizerConfig
from gplq_ros.onboard.messages import decode_descriptor, decode_map, encode_fix, encode_pose
from gplq_ros.onboard.paths import vocabulary_parameter
from gplq_ros.onboard.pipeline import single_thread_blas
from gplq_ros.onboard.placemap import MapError, PlaceMap
from gplq_ros.onboard.stats import LatencyWindow
from gplq_ros.onboard.status import Level
from gplq_ros.onboard.vocabulary import Vocabulary

DEFAULTS = LocalizerConfig()
RANGES = {'top_k': (1, 1000), 'cluster_radius_m': (0.1, 1000.0), 'temperature': (1e-4, 10.0),
          'min_margin': (0.0, 1.99), 'sigma_floor_m': (0.01, 1000.0), 'measurement_scale': (0.01, 1000.0),
          'accel_sigma': (0.001, 100.0), 'max_speed_mps': (0.1, 500.0), 'gate_chi2': (0.1, 1000.0),
          'init_fixes': (1, 100), 'reset_after': (1, 10000), 'search_radius_m': (0.5, 100.0),
          'yaw_span_deg': (0.0, 90.0), 'min_ncc': (-1.0, 1.0), 'refine_sigma_m': (0.01, 100.0),
          'height_ratio_min': (0.1, 1.0), 'height_ratio_max': (1.0, 10.0), 'recheck_every': (0, 10000),
          'recheck_margin': (0.0, 2.0), 'recheck_confirm': (1, 100)}
HELP = {'top_k': 'tiles retrieved per frame', 'cluster_radius_m': 'top-k tiles this close to the best are the same '
        'place', 'temperature': 'score softness of the top-k position weights',
        'min_margin': 'no measurement when the best other place scores within this of the best',
        'sigma_floor_m': 'smallest measurement standard deviation, m',
        'measurement_scale': 'multiplier on the measurement covariance',
        'accel_sigma': 'filter process noise, white acceleration, m/s^2',
        'max_speed_mps': 'a fix farther than this speed allows since the last fix is rejected',
        'gate_chi2': 'innovation gate (chi-square, 2 dof)', 'init_fixes': 'consistent measurements to start the filter',
        'reset_after': 'rejections in a row before the filter restarts',
        'search_radius_m': 'refinement: translations searched around the retrieved position, m',
        'yaw_span_deg': 'refinement: yaws searched around the retrieved yaw, degrees',
        'min_ncc': 'refinement: a weaker boundary-map match keeps the retrieval measurement',
        'refine_sigma_m': 'refinement: standard deviation of a refined position, m',
        'height_ratio_min': 'refinement without a track: lowest height searched, times the lowest map height',
        'height_ratio_max': 'refinement without a track: highest height searched, times the highest map height',
        'recheck_every': 'while tracking, every n-th frame whose retrieval points elsewhere also searches there '
        '(0: never)',
        'recheck_margin': 'a place matching this much better (NCC) than the track is a challenger',
        'recheck_confirm': 'challenger rechecks in a row that restart the filter on it'}


class LocalizerNode(ManagedNode):
    NODE_NAME = 'localizer_node'

    def declare(self) -> None:
        p = self.params
        p.declare('map', '', 'place map (gplq_map); required', read_only=True)
        p.declare('vocabulary', '', 'the VLAD vocabulary of the feature node (checked against the map); empty: the '
                  '$GPLQ_HOME default', read_only=True)
        self.map_frame = p.declare('map_frame', 'map', 'frame_id of the published pose', read_only=True)
        p.declare('refine', DEFAULTS.refine, 'refine the retrieved position by matching the frame\'s boundary map '
                  '(topic boundary_map, same stamp as the descriptor) against the map\'s boundary orthomap',
                  read_only=True)
        for name, (lo, hi) in RANGES.items():
            p.declare(name, getattr(DEFAULTS, name), HELP[name], (lo, hi), read_only=True)
        self.unmeasured = p.declare('unmeasured_variance', 1e6, 'variance of the axes the localizer does not '
                                    'measure (z, roll, pitch; NavSatFix up)', (1.0, 1e12), read_only=True)
        p.declare('stale_after_s', 2.0, 'WARN when no descriptor for this long', (0.1, 3600.0))
        p.declare('period', 1.0, 'seconds between /diagnostics messages', (0.05, 60.0), read_only=True)
        self.hardware_id = p.declare('hardware_id', 'gplq_ros', 'hardware_id in /diagnostics', read_only=True)
        self.qos_in = declare_qos(p, 'input_qos', 'reliable', 10, 'the descriptor subscription')
        self.localizer = None

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
        cfg = LocalizerConfig(refine=p['refine'], **{k: p[k] for k in RANGES})
        single_thread_blas()      # a few ms of numpy per frame beside the feature node's graph runtime
        self.localizer = Localizer(pmap, cfg)
        self.georef = pmap.georef
        self.counts = {'ambiguous': 0, 'initialising': 0, 'jump': 0, 'gate': 0, 'lost': 0, 'malformed': 0,
                       'unpaired': 0}
        self.pending = {}                # stamp -> {'descriptor': ..., 'boundary': ...} until both are in
        self.last = None                 # the last Estimate
        self.last_error = ''
        self.last_input = None
        self.query_ms = LatencyWindow(300)
        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, '~/pose', 10)
        self.pub_fix = self.create_publisher(NavSatFix, '~/fix', 10) if self.georef else None
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.publishers_ = [x for x in (self.pub_pose, self.pub_fix, self.pub_diag) if x is not None]
        self.timer = self.create_timer(p['period'], self.publish_status)
        self.get_logger().info(f'map {Path(p["map"]).name}: {pmap.meta.n_tiles} tiles of {pmap.meta.source_image}'
                               + (f', geo-referenced ({self.georef.crs})' if self.georef else ', not geo-referenced'))

    def activate(self) -> None:
        self.inputs.append(self.create_subscription(Image, 'descriptor', lambda m: self.on_input(m, 'descriptor'),
                                                    self.qos_in))
        if self.params['refine']:
            self.inputs.append(self.create_subscription(Image, 'boundary_map', lambda m: self.on_input(m, 'boundary'),
                                                        self.qos_in))

    def release(self) -> None:
        super().release()
        self.localizer = None

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def on_input(self, msg: Image, kind: str) -> None:
        """Joins descriptor and boundary map by stamp (with ``refine``), then localizes."""
        self.last_input = self.now_s()
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        got = self.pending.setdefault(key, {})
        got[kind] = msg
        if 'descriptor' not in got or (self.params['refine'] and 'boundary' not in got):
            while len(self.pending) > 10:          # a partner that never came: counted, not kept
                del self.pending[next(iter(self.pending))]
                self.counts['unpaired'] += 1
            return
        del self.pending[key]
        self.localize(got['descriptor'], got.get('boundary'))

    def localize(self, msg: Image, boundary_msg) -> None:
        try:
            d = decode_descriptor(msg)
            b = decode_map(boundary_msg) if boundary_msg is not None else None
            t0 = time.perf_counter()
            est = self.localizer.update(d, msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, b)
            self.query_ms.add((time.perf_counter() - t0) * 1e3)
        except (ImageFormatError, ValueError) as e:     # MapError is a ValueError
            self.counts['malformed'] += 1
            self.last_error = str(e)
            self.get_logger().error(f'descriptor rejected: {e}')
            return
        self.last = est
        if not est.fix:
            self.counts[est.reason] += 1
            return
        self.publish_fix(msg.header.stamp, est)

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
        if self.counts['malformed'] and self.last_error:
            level, text = Level.ERROR, f'malformed descriptor: {self.last_error}'
            self.last_error = ''
        elif idle is None or idle > self.params['stale_after_s']:
            level, text = Level.WARN, 'no descriptor' + (f' for {idle:.1f} s' if idle is not None else ' yet')
        elif last is not None and last.fix:
            level, text = Level.OK, 'fix'
        else:
            level, text = Level.WARN, f'no fix: {last.reason if last else "no descriptor yet"}'
        values = dict(frames=loc.frames, fixes=loc.fixes, fix_rate=loc.fixes / max(loc.frames, 1),
                      last_score=last.measurement.score if last else None,
                      last_margin=last.measurement.margin if last else None,
                      last_ncc=last.measurement.ncc if last else None,
                      map_tiles=loc.map.meta.n_tiles, recheck_restarts=loc.recheck_restarts,
                      query_p50_ms=self.query_ms.summary()['p50_ms'],
                      lifecycle_state=self.state_label,
                      **{f'no_fix_{k}': v for k, v in self.counts.items()})
        self.pub_diag.publish(diag.array(self.get_clock().now().to_msg(), [
            diag.status(diag.status_name(self), self.hardware_id, level, text, values)]))


def main(argv=None) -> int:
    return run_node(LocalizerNode, argv)


if __name__ == '__main__':
    sys.exit(main())
