"""Evaluation of a recorded flight (``gplq_eval_bag``): a gplq_record bag, or one recorded
with ``ros2 bag record``; mcap or sqlite3, read with ``rosbags`` (no rclpy).

Reads the camera topic and the feature node's outputs, pairs them by header stamp and
writes ``<out>/summary.json`` (frames in/out, drops, outputs without a matching input,
end-to-end latency = bag receipt time of each boundary map minus its stamp: p50/p95/max,
rates, drift over time from the monitor's ``~/status`` or recomputed with an FP32 engine,
/diagnostics levels), ``drift.png`` and ``frame_<i>_<stamp>.png`` (camera | boundary map
scaled to its maximum | corners) for a few frames. When the bag has the localizer's
``*/pose`` (PoseWithCovarianceStamped) and the simulated flight's ``*/true_pose``, they are
paired by stamp (``onboard.localize.summarize``: position error p50/p95/max, yaw error, fix
rate, correct-fix rate (<= 5 m), time to first fix, fraction of errors inside the reported
2-sigma ellipse) and ``track.png`` shows the true track and the fixes coloured by error.
"""
import json
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from gplq_ros.onboard.drift import METRICS, compare
from gplq_ros.onboard.draw import frame_picture
from gplq_ros.onboard.image_codec import ImageFormatError, image_to_rgb
from gplq_ros.onboard.localize import summarize
from gplq_ros.onboard.messages import DECODERS, decode_pose, decode_status
from gplq_ros.onboard.stats import LatencyWindow
from gplq_ros.onboard.status import Level

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

OUTPUT_SUFFIXES = ('boundary_map', 'corner_map', 'corners', 'descriptor')


def _stamp(msg):
    return (int(msg.header.stamp.sec), int(msg.header.stamp.nanosec))


def _secs(key):
    return key[0] + 1e-9 * key[1]


def pick_topics(conns, camera_topic=None):
    by_topic = {c.topic: c.msgtype for c in conns}
    images = [t for t, ty in by_topic.items() if ty == 'sensor_msgs/msg/Image'
              and not t.endswith(tuple('/' + s for s in OUTPUT_SUFFIXES))]
    if camera_topic is None:
        if len(images) != 1:
            raise ValueError(f'--camera-topic: the bag has {len(images)} camera-like Image topics {images}; name one')
        camera_topic = images[0]
    elif camera_topic not in by_topic:
        raise ValueError(f'--camera-topic {camera_topic!r}: not in the bag (topics: {sorted(by_topic)})')

    def find(suffix, msgtype):
        hits = [t for t, ty in by_topic.items() if t.endswith('/' + suffix) and ty == msgtype]
        return hits[0] if hits else None
    topics = {'camera': camera_topic, 'boundary': find('boundary_map', 'sensor_msgs/msg/Image'),
              'corners': find('corners', 'sensor_msgs/msg/PointCloud2'),
              'descriptor': find('descriptor', 'sensor_msgs/msg/Image'),
              'status': find('status', 'std_msgs/msg/Float64MultiArray'),
              'diagnostics': '/diagnostics' if by_topic.get('/diagnostics') == 'diagnostic_msgs/msg/DiagnosticArray'
              else None,
              'true_pose': find('true_pose', 'geometry_msgs/msg/PoseStamped'),
              'pose': find('pose', 'geometry_msgs/msg/PoseWithCovarianceStamped')}
    if topics['boundary'] is None:
        raise ValueError(f'no */boundary_map Image topic in the bag (topics: {sorted(by_topic)})')
    return topics


def evaluate(bag: Path, camera_topic=None, frames: int = 4, reference=None, check_every: int = 10):
    """Returns (summary dict, frames for pictures: list of (camera rgb, boundary, corners)).

    ``reference``: an FP32 ``onboard.engine.Engine``; drift is then recomputed from the bag
    (every ``check_every``-th frame with outputs) instead of read from the monitor's status,
    e.g. for a bag recorded without the monitor."""
    if not Path(bag).exists():
        raise FileNotFoundError(f'bag {bag}: not found')
    with AnyReader([Path(bag)], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        topics = pick_topics(reader.connections, camera_topic)

        def messages(*roles):
            names = {topics[r] for r in roles if topics[r]}
            for conn, t, raw in reader.messages(connections=[c for c in reader.connections if c.topic in names]):
                yield conn.topic, t, reader.deserialize(raw, conn.msgtype)
        cam, out, lat = {}, {}, LatencyWindow(10 ** 9)
        status, levels, last_values, t0, t1 = [], {}, {}, None, None
        fixes, truth = [], []
        for topic, t, msg in messages('camera', 'boundary', 'status', 'diagnostics', 'pose', 'true_pose'):
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
            elif topic == topics['true_pose']:
                xy, _, yaw = decode_pose(msg)
                truth.append((_secs(_stamp(msg)), xy, yaw))
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
    if topics['pose'] and truth:
        loc = summarize(len(cam), fixes, truth, _secs(min(cam)) if cam else truth[0][0])
        by_t = {round(t, 6): xy for t, xy, _ in truth}
        loc['track'] = [[round(t, 6), *by_t[round(t, 6)].round(3).tolist(), *np.round(xy, 3).tolist()]
                        for t, xy, _, _ in fixes if round(t, 6) in by_t]
        loc['true_track'] = [[round(t, 6), *np.round(xy, 3).tolist()] for t, xy, _ in truth]
        summary['localization'] = loc
    feat = next((v for k, v in last_values.items() if k.endswith('feature_node')), None)
    if feat and lat_s['p95_ms'] is not None and feat.get('engine_p95_ms', 'nan') != 'nan':
        summary['engine_p95_ms'] = float(feat['engine_p95_ms'])
        summary['latency_p95_over_engine_p95'] = lat_s['p95_ms'] / float(feat['engine_p95_ms'])
    pics = [(k, (v['rgb'], v['boundary']), v.get('corners')) for k, v in sorted(parts.items())
            if k in chosen and 'rgb' in v and 'boundary' in v]
    return summary, pics


def track_picture(loc: dict, path: Path, background=None, gsd_m: float = 0.0) -> Path:
    """The true track (line) and the localizer's fixes (dots coloured by error, m) in map
    metres; ``background``: the orthophoto (RGB) with its metres per pixel."""
    fig, ax = plt.subplots(figsize=(7, 6))
    if background is not None:
        h, w = background.shape[:2]
        ax.imshow(background, extent=(0, w * gsd_m, -h * gsd_m, 0))
    true = np.array(loc['true_track'])
    ax.plot(true[:, 1], true[:, 2], 'w-' if background is not None else 'k-', lw=1.5, label='true track')
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


def print_summary(s, out: Path) -> None:
    lat = s['latency_ms']

    def f(v, fmt='{:.1f}'):
        return fmt.format(v) if v is not None else '-'
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
        print(f'  localization: fixes {loc["fixes"]} of {loc["frames"]} frames, correct (<= 5 m) '
              f'{loc["correct_fix_rate"]:.1%} of frames after the first fix, error p50 {loc["error_p50_m"]:.1f} m, '
              f'p95 {loc["error_p95_m"]:.1f} m, max {loc["error_max_m"]:.1f} m, yaw p50 '
              f'{loc["yaw_error_p50_deg"]:.1f} deg, inside 2 sigma {loc["inside_2sigma"]:.1%}, first fix after '
              f'{f(loc["time_to_first_fix_s"], "{:.1f}")} s')
    if s['drift']:
        print(f'  drift vs FP32 ({s["drift_source"]}; mean/min): ' + ', '.join(
            f'{k} {v["mean"]:.3f}/{v["min"]:.3f}' for k, v in s['drift'].items()))
    print(f'  report: {out / "summary.json"}')
