"""Evaluation of a recorded flight (``gplq_eval_bag``): a gplq_record bag, or one recorded
with ``ros2 bag record``; mcap or sqlite3, read with ``rosbags`` (no rclpy).

Reads the camera topic and the feature node's outputs, pairs them by header stamp and
writes ``<out>/summary.json`` (frames in/out, drops, outputs without a matching input,
end-to-end latency = bag receipt time of each boundary map minus its stamp: p50/p95/max,
rates, drift over time from the monitor's ``~/status`` or recomputed with an FP32 engine,
/diagnostics levels), ``drift.png`` and ``frame_<i>_<stamp>.png`` (camera | boundary map
scaled to its maximum | corners) for a few frames.

**Localization.** The localizer's ``*/pose`` (PoseWithCovarianceStamped in ``map``) is compared
with a reference (``onboard.localize.summarize``: fix rate, correct-fix rate (<= 5 m), shares
within 5 / 10 / 20 m, position error p50/p95/max, yaw error, fraction of errors inside the
reported 2-sigma ellipse, confident-wrong fixes, time to first fix) and ``track.png`` shows the
reference track and the fixes coloured by error. The reference is either

* a ``*/true_pose`` (PoseStamped in ``map``: flight_sim_node's, or photo_camera_node's with a
  georeference), paired by header stamp; or
* a GNSS track (``FixReference``: a ``sensor_msgs/NavSatFix`` topic and the place map's
  georeference): each sample's latitude/longitude in UTM in the map's zone minus the map origin
  is its map x/y; samples without a fix (``status.status < 0``) or without a finite position are
  dropped and counted. The reference at a pose's (or camera frame's) stamp is the track
  interpolated linearly between the samples before and after it, when both are within
  ``max_gap_s`` of it (an exact sample needs no neighbour); other stamps have no reference (the
  poses among them are counted). GNSS gives no yaw: the yaw error is then absent (None).
  Horizontal only; the GNSS error itself is part of the measured error.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import matplotlib
import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from gplq_ros.onboard.drift import METRICS, compare
from gplq_ros.onboard.draw import frame_picture
from gplq_ros.onboard.geo import GeoRef, wgs84_to_utm
from gplq_ros.onboard.image_codec import ImageFormatError, image_to_rgb
from gplq_ros.onboard.localize import summarize
from gplq_ros.onboard.messages import DECODERS, decode_pose, decode_status
from gplq_ros.onboard.placemap import read_georef
from gplq_ros.onboard.stats import LatencyWindow
from gplq_ros.onboard.status import Level

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

OUTPUT_SUFFIXES = ('boundary_map', 'corner_map', 'corners', 'descriptor', 'verify_image')


def _stamp(msg):
    return (int(msg.header.stamp.sec), int(msg.header.stamp.nanosec))


def _secs(key):
    return key[0] + 1e-9 * key[1]


NAVSATFIX = 'sensor_msgs/msg/NavSatFix'


@dataclass(frozen=True)
class FixReference:
    """A GNSS reference for the localizer's poses: the NavSatFix ``topic``, the place map's
    ``georef`` (``map_fix_reference`` reads it from a map file) and the largest time from a
    pose's stamp to the samples it is interpolated between, s."""
    topic: str
    georef: GeoRef
    max_gap_s: float = 1.0
    source: str = ''           # where the georeference came from (the map file), for the summary

    def __post_init__(self):
        if not (math.isfinite(self.max_gap_s) and self.max_gap_s > 0):
            raise ValueError(f'--max-gap {self.max_gap_s}: must be > 0 s')


def map_fix_reference(topic: str, place_map: Path, max_gap_s: float = 1.0) -> FixReference:
    """A ``FixReference`` with the georeference of a gplq_map place map (only its metadata is
    read); refuses a map without one."""
    georef = read_georef(place_map)
    if georef is None:
        raise ValueError(f'--map {place_map}: the place map has no georeference, so latitude/longitude cannot be '
                         'put in its map frame; build it with gplq_map from a GeoTIFF, with --world-file, '
                         '--utm-zone/--utm-origin or --photos')
    return FixReference(topic, georef, max_gap_s, str(place_map))


def fix_track(samples, georef: GeoRef) -> Tuple[np.ndarray, np.ndarray, int]:
    """(stamps (N,), map x/y (N, 2), dropped) of NavSatFix samples [(stamp s, status, latitude,
    longitude)]: sorted by stamp (a repeated stamp keeps its last sample); samples with status < 0
    (no fix) or a non-finite position are dropped and counted."""
    kept, dropped = {}, 0
    for t, status, lat, lon in samples:
        if status < 0 or not (math.isfinite(lat) and math.isfinite(lon)):
            dropped += 1
            continue
        e, n = wgs84_to_utm(lat, lon, georef.zone, georef.north)
        kept[t] = (e - georef.origin_e, n - georef.origin_n)
    ts = np.array(sorted(kept), np.float64)
    return ts, np.array([kept[t] for t in ts], np.float64).reshape(-1, 2), dropped


def interpolate_track(ts: np.ndarray, xy: np.ndarray, stamps, max_gap_s: float) -> Dict[float, np.ndarray]:
    """{stamp: x/y} of the track (``ts`` increasing) interpolated linearly at each stamp whose
    samples before and after are both within ``max_gap_s`` (a stamp equal to a sample's takes
    it); stamps outside the track or in a longer gap are left out."""
    out = {}
    for t in stamps:
        i = int(np.searchsorted(ts, t))
        if i < len(ts) and ts[i] == t:
            out[t] = xy[i].copy()
        elif 0 < i < len(ts) and t - ts[i - 1] <= max_gap_s and ts[i] - t <= max_gap_s:
            w = (t - ts[i - 1]) / (ts[i] - ts[i - 1])
            out[t] = (1 - w) * xy[i - 1] + w * xy[i]
    return out


def _sigma_h(msg) -> float:
    """Horizontal 1-sigma of a NavSatFix (sqrt of the mean east/north variance); NaN when unknown."""
    if msg.position_covariance_type == 0:      # COVARIANCE_TYPE_UNKNOWN
        return float('nan')
    c = msg.position_covariance
    v = 0.5 * (float(c[0]) + float(c[4]))
    return math.sqrt(v) if math.isfinite(v) and v >= 0 else float('nan')


def pick_topics(conns, camera_topic=None, fix_topic=None):
    by_topic = {c.topic: c.msgtype for c in conns}
    images = [t for t, ty in by_topic.items() if ty == 'sensor_msgs/msg/Image'
              and not t.endswith(tuple('/' + s for s in OUTPUT_SUFFIXES))]
    if camera_topic is None:
        if len(images) != 1:
            raise ValueError(f'--camera-topic: the bag has {len(images)} camera-like Image topics {images}; name one')
        camera_topic = images[0]
    elif camera_topic not in by_topic:
        raise ValueError(f'--camera-topic {camera_topic!r}: not in the bag (topics: {sorted(by_topic)})')

    def find(suffix, msgtype):     # the localizer's / simulator's own first, if several
        hits = sorted((t for t, ty in by_topic.items() if t.endswith('/' + suffix) and ty == msgtype),
                      key=lambda t: not t.endswith(('localizer_node/' + suffix, 'sim_node/' + suffix,
                                                    'camera_node/' + suffix)))
        return hits[0] if hits else None
    topics = {'camera': camera_topic, 'boundary': find('boundary_map', 'sensor_msgs/msg/Image'),
              'corners': find('corners', 'sensor_msgs/msg/PointCloud2'),
              'descriptor': find('descriptor', 'sensor_msgs/msg/Image'),
              'status': find('status', 'std_msgs/msg/Float64MultiArray'),
              'diagnostics': '/diagnostics' if by_topic.get('/diagnostics') == 'diagnostic_msgs/msg/DiagnosticArray'
              else None,
              'true_pose': find('true_pose', 'geometry_msgs/msg/PoseStamped'),
              'pose': find('pose', 'geometry_msgs/msg/PoseWithCovarianceStamped'),
              'reference_fix': None}
    if topics['boundary'] is None:
        raise ValueError(f'no */boundary_map Image topic in the bag (topics: {sorted(by_topic)})')
    if fix_topic is not None:
        if by_topic.get(fix_topic) != NAVSATFIX:
            have = sorted(t for t, ty in by_topic.items() if ty == NAVSATFIX)
            raise ValueError(f'--reference-fix {fix_topic!r}: ' + ('not in the bag' if fix_topic not in by_topic
                             else f'a {by_topic[fix_topic]}, not a {NAVSATFIX}') + f' (NavSatFix topics: {have})')
        if fix_topic.endswith('localizer_node/fix'):
            raise ValueError(f'--reference-fix {fix_topic!r}: the localizer\'s own output, not a reference')
        if topics['pose'] is None:
            raise ValueError(f'--reference-fix {fix_topic!r}: the bag has no */pose PoseWithCovarianceStamped topic '
                             '(localizer_node/pose) to compare with it')
        topics['reference_fix'] = fix_topic
    return topics


def _reference_fixes(fixes: List[tuple], cam_stamps, samples, ref: FixReference) -> Tuple[list, dict, list]:
    """The truth list for ``summarize`` from a GNSS track: the reference at every camera frame
    and pose stamp that has one; the reference's description and counts; the track's samples
    [[t, x, y]]."""
    ts, xy, dropped = fix_track([s[:4] for s in samples], ref.georef)
    if not len(ts):
        raise ValueError(f'--reference-fix {ref.topic}: none of its {len(samples)} samples has a fix '
                         f'({dropped} with status < 0 or no position)')
    pose_t = [t for t, _, _, _ in fixes]
    at = interpolate_track(ts, xy, sorted(set(cam_stamps) | set(pose_t)), ref.max_gap_s)
    missing = sum(1 for t in pose_t if t not in at)
    if pose_t and missing == len(pose_t):
        raise ValueError(f'--reference-fix {ref.topic}: none of the {len(pose_t)} poses is within --max-gap '
                         f'{ref.max_gap_s:g} s of fix samples on both sides (pose stamps {min(pose_t):.3f}..'
                         f'{max(pose_t):.3f} s, fix stamps {ts[0]:.3f}..{ts[-1]:.3f} s: different clocks?)')
    sig = np.array([s[4] for s in samples if np.isfinite(s[4])])
    info = {'kind': 'navsatfix', 'topic': ref.topic, 'georef': ref.georef.crs, 'map': ref.source,
            'max_gap_s': ref.max_gap_s, 'samples': len(samples), 'samples_used': int(len(ts)),
            'samples_without_fix': dropped, 'poses_without_reference': missing,
            'sigma_h_p50_m': float(np.median(sig)) if sig.size else None}
    truth = [(t, p, float('nan')) for t, p in sorted(at.items())]
    return truth, info, [[round(float(t), 6), *np.round(p, 3).tolist()] for t, p in zip(ts, xy)]


def evaluate(bag: Path, camera_topic=None, frames: int = 4, reference=None, check_every: int = 10,
             fix_reference: Optional[FixReference] = None):
    """Returns (summary dict, frames for pictures: list of (camera rgb, boundary, corners)).

    ``reference``: an FP32 ``onboard.engine.Engine``; drift is then recomputed from the bag
    (every ``check_every``-th frame with outputs) instead of read from the monitor's status,
    e.g. for a bag recorded without the monitor. ``fix_reference``: compare the localizer's
    poses with that GNSS track instead of a ``*/true_pose``."""
    if not Path(bag).exists():
        raise FileNotFoundError(f'bag {bag}: not found')
    with AnyReader([Path(bag)], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        topics = pick_topics(reader.connections, camera_topic,
                             fix_reference.topic if fix_reference is not None else None)
        fix_topics = sorted({c.topic for c in reader.connections
                             if c.msgtype == NAVSATFIX and not c.topic.endswith('localizer_node/fix')})

        def messages(*roles):
            names = {topics[r] for r in roles if topics[r]}
            for conn, t, raw in reader.messages(connections=[c for c in reader.connections if c.topic in names]):
                yield conn.topic, t, reader.deserialize(raw, conn.msgtype)
        cam, out, lat = {}, {}, LatencyWindow(10 ** 9)
        status, levels, last_values, t0, t1 = [], {}, {}, None, None
        fixes, truth, gnss = [], [], []
        truth_role = 'reference_fix' if fix_reference is not None else 'true_pose'
        for topic, t, msg in messages('camera', 'boundary', 'status', 'diagnostics', 'pose', truth_role):
            t0 = t if t0 is None else t0
            t1 = t
            if topic == topics['camera']:
                cam[_stamp(msg)] = t
            elif topic == topics['boundary']:
                k = _stamp(msg)
                out[k] = t
                lat.add((t - k[0] * 1e9 - k[1]) / 1e6)
            elif topic == topics['status']:
                status.append(dict(decode_status(msg), t=(t - t0) / 1e9))
            elif topic == topics['pose']:
                xy, cov, yaw = decode_pose(msg)
                fixes.append((_secs(_stamp(msg)), xy, cov, yaw))
            elif topic == topics[truth_role] and fix_reference is None:
                xy, _, yaw = decode_pose(msg)
                truth.append((_secs(_stamp(msg)), xy, yaw))
            elif topic == topics[truth_role]:
                gnss.append((_secs(_stamp(msg)), int(msg.status.status), float(msg.latitude),
                             float(msg.longitude), _sigma_h(msg)))
            else:
                for st in msg.status:
                    lv = str(int(Level.of(st)))
                    levels.setdefault(st.name, {}).setdefault(lv, 0)
                    levels[st.name][lv] += 1
                    last_values[st.name] = {kv.key: kv.value for kv in st.values}
        # second pass: decode only the frames drawn in the report (and, with a reference,
        # those checked for drift, compared as soon as their outputs are in)
        both = sorted(set(cam) & set(out))
        chosen = {both[i] for i in np.unique(np.linspace(0, len(both) - 1, frames).round().astype(int))} \
            if both and frames > 0 else set()
        checked = set(both[::check_every]) if reference is not None else set()
        need = {'rgb', 'boundary'} | ({'corners'} if topics['corners'] else set()) | \
            ({'descriptor'} if topics['descriptor'] and reference is not None and reference.centers is not None
             else set())
        parts = {k: {} for k in chosen | checked}
        recomputed = []
        if parts:
            decode = {topics[k]: (k, fn) for k, fn in DECODERS.items()}
            decode[topics['camera']] = ('rgb', lambda m: image_to_rgb(m, max_pixels=None))
            for topic, t, msg in messages('camera', 'boundary', 'corners', 'descriptor'):
                k = _stamp(msg)
                if k not in parts:
                    continue
                name, fn = decode[topic]
                try:
                    parts[k][name] = fn(msg)
                except ImageFormatError:
                    parts[k]['bad'] = True
                if k in checked and need <= set(parts[k]):
                    got = parts[k]
                    m = compare(reference(got['rgb']), got['boundary'], got.get('corners'), got.get('descriptor'))
                    recomputed.append(dict(m, t=(t - t0) / 1e9, stamp=_secs(k)))
                    checked.discard(k)
                    if k not in chosen:
                        del parts[k]
    missing = set(cam) - set(out)
    dur = (t1 - t0) / 1e9 if t0 is not None and t1 != t0 else 0.0
    drift = {}
    checks = recomputed if reference is not None else \
        [s for i, s in enumerate(status) if i == 0 or s.get('checks') != status[i - 1].get('checks')]
    for k in METRICS:
        v = np.array([s[k] for s in checks if k in s and np.isfinite(s[k])])
        if v.size:
            drift[k] = {'last': float(v[-1]), 'mean': float(v.mean()), 'min': float(v.min())}
    lat_s = lat.summary()
    summary = {
        'bag': str(bag), 'topics': topics, 'duration_s': round(dur, 3),
        'frames_in': len(cam), 'frames_out': len(out), 'matched': len(both),
        'dropped': len(missing), 'drop_rate': len(missing) / len(cam) if cam else None,
        'outputs_without_input': len(set(out) - set(cam)),
        # frames between the first and the last output: start-up and shutdown excluded
        'dropped_steady': len([k for k in missing if out and min(out) <= k <= max(out)]),
        'input_rate_hz': len(cam) / dur if dur else None, 'output_rate_hz': len(out) / dur if dur else None,
        'latency_ms': {k: lat_s[k] for k in ('p50_ms', 'p95_ms', 'max_ms')},
        'latency_mean_ms': float(np.mean(lat.values)) if lat.values else None,
        'monitor_live': {k: status[-1].get(k) for k in ('latency_p50_ms', 'latency_p95_ms', 'level', 'checks')}
        if status else None,
        'drift': drift, 'drift_source': ('recomputed with ' + str(reference.path)) if reference is not None
        else ('monitor status' if status else None),
        'drift_over_time': [{k: s.get(k) for k in ('t', 'checks', *METRICS, 'level')} for s in checks],
        'diagnostics_levels': levels,
        'diagnostics_last': last_values,
    }
    ref_info = {'kind': 'true_pose', 'topic': topics['true_pose']}
    if fix_reference is not None:
        truth, ref_info, gnss_track = _reference_fixes(fixes, [_secs(k) for k in cam], gnss, fix_reference)
    if topics['pose'] and truth:
        loc = summarize(len(cam), fixes, truth, _secs(min(cam)) if cam else truth[0][0])
        by_t = {round(t, 6): xy for t, xy, _ in truth}
        loc['track'] = [[round(t, 6), *by_t[round(t, 6)].round(3).tolist(), *np.round(xy, 3).tolist()]
                        for t, xy, _, _ in fixes if round(t, 6) in by_t]
        if fix_reference is None:
            loc['true_track'] = [[round(t, 6), *np.round(xy, 3).tolist()] for t, xy, _ in truth]
        else:     # the GNSS samples themselves (the interpolated points are on the lines between them)
            loc['true_track'] = gnss_track
            loc['yaw_error_p50_deg'] = None          # GNSS has no heading: absent, not wrong
            # the localizer's first pose, compared or not (the GNSS track may start later)
            loc['time_to_first_fix_s'] = min(t for t, _, _, _ in fixes) - (_secs(min(cam)) if cam else truth[0][0])
        loc['reference'] = ref_info
        summary['localization'] = loc
    elif topics['pose']:
        summary['localization_note'] = (
            f'{topics["pose"]} has no reference (no */true_pose)' + (
                f'; for a GNSS reference: --reference-fix {fix_topics[0]} --map PLACE_MAP (NavSatFix topics: '
                f'{fix_topics})' if fix_topics else '; give --reference-fix TOPIC --map PLACE_MAP with a bag that '
                'has a NavSatFix topic'))
    feat = next((v for k, v in last_values.items() if k.endswith('feature_node')), None)
    if feat and lat_s['p95_ms'] is not None and feat.get('engine_p95_ms', 'nan') != 'nan':
        summary['engine_p95_ms'] = float(feat['engine_p95_ms'])
        summary['latency_p95_over_engine_p95'] = lat_s['p95_ms'] / float(feat['engine_p95_ms'])
    pics = [(k, (v['rgb'], v['boundary']), v.get('corners')) for k, v in sorted(parts.items())
            if k in chosen and 'rgb' in v and 'boundary' in v]
    return summary, pics


def track_picture(loc: dict, path: Path, background=None, gsd_m: float = 0.0) -> Path:
    """The reference track (line: the true one, or the GNSS samples) and the localizer's fixes
    (dots coloured by error, m) in map metres; ``background``: the orthophoto (RGB) with its
    metres per pixel."""
    fig, ax = plt.subplots(figsize=(7, 6))
    if background is not None:
        h, w = background.shape[:2]
        ax.imshow(background, extent=(0, w * gsd_m, -h * gsd_m, 0))
    true = np.array(loc['true_track'])
    gnss = loc.get('reference', {}).get('kind') == 'navsatfix'
    ax.plot(true[:, 1], true[:, 2], ('w' if background is not None else 'k') + ('.-' if gnss else '-'),
            lw=1.5, ms=3, label='GNSS track (reference)' if gnss else 'true track')
    if loc.get('track'):
        tr = np.array(loc['track'])
        err = np.hypot(tr[:, 3] - tr[:, 1], tr[:, 4] - tr[:, 2])
        sc = ax.scatter(tr[:, 3], tr[:, 4], c=err, cmap='viridis_r' if background is None else 'plasma', s=10,
                        vmin=0, vmax=max(10.0, float(np.percentile(err, 95))), label='fixes')
        fig.colorbar(sc, ax=ax, label='position error, m')
    ax.set_aspect('equal', adjustable='datalim')
    ax.set_xlabel('x east, m (map)')
    ax.set_ylabel('y north, m (map)')
    ax.set_title(f'localizer: correct (<= 5 m) {loc["correct_fix_rate"]:.1%} of frames after the first fix\n'
                 f'error p50 {loc["error_p50_m"]:.1f} m, p95 {loc["error_p95_m"]:.1f} m', fontsize=9)
    ax.legend(loc='upper right', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(summary, pics, out: Path) -> list:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (key, (rgb, boundary), corners) in enumerate(pics):
        p = out / f'frame_{i}_{key[0]}.{key[1]:09d}.png'
        cv2.imwrite(str(p), cv2.cvtColor(frame_picture(rgb, boundary, corners), cv2.COLOR_RGB2BGR))
        written.append(str(p))
    if summary['drift_over_time']:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        t = [s['t'] for s in summary['drift_over_time']]
        for k in METRICS:
            ax.plot(t, [np.nan if s[k] is None else s[k] for s in summary['drift_over_time']], marker='.', label=k)
        ax.set_xlabel('bag time, s')
        ax.set_ylabel('vs FP32')
        ax.set_ylim(0, 1.02)
        ax.legend(loc='lower left')
        ax.set_title(f'drift over the flight ({summary["drift_source"]})'[:80])
        fig.tight_layout()
        fig.savefig(out / 'drift.png', dpi=100)
        plt.close(fig)
        written.append(str(out / 'drift.png'))
    if summary.get('localization', {}).get('true_track'):
        written.append(str(track_picture(summary['localization'], out / 'track.png')))
    summary = dict(summary, pictures=written)
    (out / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    return written


WITHIN = ('within_5m', 'within_10m', 'within_20m')


def reference_text(ref: dict) -> str:
    """One line naming the reference of a localization summary."""
    if ref.get('kind') != 'navsatfix':
        return f'true pose {ref.get("topic")}'
    sig = ref.get('sigma_h_p50_m')
    return (f'GNSS {ref["topic"]} (NavSatFix, {ref["georef"]} of {ref["map"] or "the map"}; '
            f'{ref["samples_used"]} of {ref["samples"]} samples, {ref["samples_without_fix"]} without a fix'
            + (f', reported 1-sigma p50 {sig:.1f} m' if sig is not None else '')
            + f'; {ref["poses_without_reference"]} poses without samples within {ref["max_gap_s"]:g} s)')


def print_summary(s, out: Path) -> None:
    lat = s['latency_ms']

    def f(v, fmt='{:.1f}'):
        return fmt.format(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else '-'
    print(f'gplq_eval_bag: {s["bag"]}: {s["duration_s"]:.1f} s; frames in {s["frames_in"]}, out {s["frames_out"]}, '
          f'dropped {s["dropped"]} ({f(s["drop_rate"], "{:.1%}")}; {s["dropped_steady"]} between the first and last '
          f'output), outputs without input {s["outputs_without_input"]}')
    print(f'  end-to-end latency p50 {f(lat["p50_ms"])} ms, p95 {f(lat["p95_ms"])} ms, max {f(lat["max_ms"])} ms; '
          f'rates in {f(s["input_rate_hz"])} Hz, out {f(s["output_rate_hz"])} Hz')
    if 'engine_p95_ms' in s:
        print(f'  engine p95 {s["engine_p95_ms"]:.1f} ms (feature node diagnostics): end-to-end p95 = '
              f'{s["latency_p95_over_engine_p95"]:.2f}x engine p95')
    loc = s.get('localization')
    if loc:
        print(f'  localization: compared with {reference_text(loc.get("reference", {}))}')
        print(f'    fixes {loc["fixes"]} of {loc["frames"]} frames, the first after {f(loc["time_to_first_fix_s"])} s; '
              f'of the frames after it: fix rate {f(loc["fix_rate"], "{:.1%}")}, correct (<= 5 m) '
              f'{f(loc["correct_fix_rate"], "{:.1%}")}')
        within = ' / '.join(f(loc.get(k), '{:.1%}') for k in WITHIN)
        print(f'    of the fixes: within 5 / 10 / 20 m {within}, error p50 {f(loc["error_p50_m"])} m, '
              f'p95 {f(loc["error_p95_m"])} m, max {f(loc["error_max_m"])} m; inside 2 '
              f'sigma {f(loc["inside_2sigma"], "{:.1%}")} (2 sigma p50 {f(loc.get("two_sigma_p50_m"))} m); confident '
              f'wrong {loc.get("confident_wrong", "-")} ({f(loc.get("confident_wrong_share"), "{:.1%}")}); yaw p50 '
              + (f'{f(loc["yaw_error_p50_deg"])} deg' if loc.get('yaw_error_p50_deg') is not None
                 else '- (no heading in the reference)'))
    elif s.get('localization_note'):
        print(f'  localization: {s["localization_note"]}')
    if s['drift']:
        print(f'  drift vs FP32 ({s["drift_source"]}; mean/min): ' + ', '.join(
            f'{k} {v["mean"]:.3f}/{v["min"]:.3f}' for k, v in s['drift'].items()))
    print(f'  report: {out / "summary.json"}')
