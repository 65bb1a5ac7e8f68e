"""Test helper process: publish one image (from a .npy file) repeatedly on a topic.

usage: publish_image.py TOPIC ARRAY.npy ENCODING STEP_PAD BIGENDIAN SECONDS
Publishes at 20 Hz with a real stamp and frame_id until SECONDS have passed.
"""
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from gplq_ros.onboard.image_codec import numpy_to_image


def main():
    topic, path, encoding, pad, big, seconds = sys.argv[1:7]
    arr = np.load(path)
    row = arr.strides[0]
    rclpy.init()
    node = rclpy.create_node('test_image_publisher')
    pub = node.create_publisher(Image, topic, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    end = time.monotonic() + float(seconds)
    seq = 0
    try:
        while time.monotonic() < end:
            header = Header(frame_id=f'camera_optical_{seq}', stamp=node.get_clock().now().to_msg())
            pub.publish(numpy_to_image(arr, encoding, header, step=row + int(pad), bigendian=big == '1'))
            seq += 1
            time.sleep(0.05)
    finally:
        node.destroy_node()
        rclpy.shutdown()


if __name__ == '__main__':
    main()
