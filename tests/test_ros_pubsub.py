"""A real Image crosses Fast DDS between two processes and decodes bit-exactly."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from gplq_ros.onboard.image_codec import image_to_numpy, image_to_rgb

HELPER = Path(__file__).parent / 'helpers' / 'publish_image.py'
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('encoding,pad,big', [('bgr8', 4, '0'), ('mono16', 2, '1')])
def test_image_between_processes(images, tmp_path, encoding, pad, big):
    crop = np.ascontiguousarray(images['2019_YELL_2_541000_4977000_image_crop.png'][:240, :320])
    arr = np.ascontiguousarray(crop[..., ::-1]) if encoding == 'bgr8' else \
        (crop[..., 1].astype(np.uint16) * 257)
    np.save(tmp_path / 'img.npy', arr)
    topic = f'/gplq_test/image_{encoding}'
    assert os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    proc = subprocess.Popen([sys.executable, str(HELPER), topic, str(tmp_path / 'img.npy'),
                             encoding, str(pad), big, '30'], env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    got = []
    try:
        node = rclpy.create_node('test_image_subscriber', context=ctx)
        node.create_subscription(Image, topic, got.append,
                                 QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        deadline = time.monotonic() + 25
        while len(got) < 3 and time.monotonic() < deadline and proc.poll() is None:
            ex.spin_once(timeout_sec=0.1)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
        proc.terminate()
        out = proc.communicate(timeout=10)[0].decode(errors='replace')
    assert len(got) >= 3, f'no images received; publisher said: {out[-2000:]}'
    msg = got[-1]
    assert msg.encoding == encoding and msg.is_bigendian == int(big == '1')
    assert msg.step == arr.strides[0] + pad
    assert msg.header.frame_id.startswith('camera_optical_')
    assert msg.header.stamp.sec > 0
    np.testing.assert_array_equal(image_to_numpy(msg), arr)
    if encoding == 'bgr8':
        np.testing.assert_array_equal(image_to_rgb(msg), crop)
