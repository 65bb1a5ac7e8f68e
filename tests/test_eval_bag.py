"""gplq_eval_bag on a bag written here with known stamps and receipt times (sqlite3, the
storage `ros2 bag record` uses by default on Humble), from rclpy-serialized messages."""
import json

import numpy as np
import pytest
from helpers.cli import run_module
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from std_msgs.msg import Header

from gplq_ros.onboard.image_codec import numpy_to_image

T0 = 1_700_000_000


def test_eval_bag_latency_drops_and_foreign_outputs(tmp_path):
    ts = get_typestore(Stores.ROS2_JAZZY)
    bag = tmp_path / 'flight'
    w = Writer(bag, version=8, storage_plugin=StoragePlugin.SQLITE3)
    w.open()
    cam = w.add_connection('/cam/image', 'sensor_msgs/msg/Image', typestore=ts)
    bnd = w.add_connection('/feature_node/boundary_map', 'sensor_msgs/msg/Image', typestore=ts)
    rgb = np.zeros((48, 64, 3), np.uint8)
    lat_ms = []
    for i in range(20):
        stamp_ns = T0 * 10 ** 9 + i * 100_000_000            # 10 Hz
        h = Header(frame_id='cam')
        h.stamp.sec, h.stamp.nanosec = divmod(stamp_ns, 10 ** 9)
        w.write(cam, stamp_ns + 2_000_000, serialize_message(numpy_to_image(rgb, 'rgb8', h)))
        if i in (5, 6):
            continue                                         # two frames without output
        latency = 20 + i                                     # ms
        lat_ms.append(latency)
        w.write(bnd, stamp_ns + latency * 1_000_000,
                serialize_message(numpy_to_image(np.full((3, 4), 0.5, np.float32), '32FC1', h)))
    h = Header(frame_id='cam')
    h.stamp.sec = T0 + 99                                    # an output whose stamp no input had
    w.write(bnd, (T0 + 3) * 10 ** 9, serialize_message(numpy_to_image(np.zeros((3, 4), np.float32), '32FC1', h)))
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
