"""gplq_eval_bag on a bag written here with known stamps and receipt times (sqlite3, the
storage `ros2 bag record` uses by default on Humble), from rclpy-serialized messages."""
import json

import numpy as np
import pytest
from helpers.bags import CameraBag
from helpers.cli import run_module

T0 = 1_700_000_000


def test_eval_bag_latency_drops_and_foreign_outputs(tmp_path):
    bag = tmp_path / 'flight'
    w = CameraBag(bag)
    lat_ms = []
    for i in range(20):
        stamp_ns = T0 * 10 ** 9 + i * 100_000_000            # 10 Hz
        w.frame(stamp_ns, stamp_ns + 2_000_000)
        if i in (5, 6):
            continue                                         # two frames without output
        latency = 20 + i                                     # ms
        lat_ms.append(latency)
        w.boundary(stamp_ns, stamp_ns + latency * 1_000_000)
    w.boundary((T0 + 99) * 10 ** 9, (T0 + 3) * 10 ** 9, 0.0)   # an output whose stamp no input had
    w.close()
    res = run_module('gplq_ros.tools.eval_bag', bag, '--out', tmp_path / 'r', '--frames', 2)
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads((tmp_path / 'r' / 'summary.json').read_text())
    assert s['topics']['camera'] == '/cam/image'
    assert (s['frames_in'], s['matched'], s['dropped'], s['dropped_steady'], s['outputs_without_input']) == \
        (20, 18, 2, 2, 1)
    assert s['latency_ms']['p50_ms'] == pytest.approx(np.percentile(lat_ms + [3000 - 99000], 50), abs=1e-3)
    assert len(s['pictures']) == 2
    res = run_module('gplq_ros.tools.eval_bag', tmp_path / 'nothing')
    assert res.returncode == 2 and 'not found' in res.stderr
