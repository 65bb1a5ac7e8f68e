"""A small rosbag2 bag (sqlite3) with a camera and the feature node's boundary maps, written
with rosbags from rclpy-serialized messages, for the bag evaluation's tests."""
import numpy as np
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from std_msgs.msg import Header

from gplq_ros.onboard.image_codec import numpy_to_image


def header(stamp_ns: int, frame_id: str = 'cam') -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = divmod(stamp_ns, 10 ** 9)
    return h


class CameraBag:
    """``frame(stamp, receipt)``: a 64x48 rgb8 camera image on ``/cam/image``;
    ``boundary(stamp, receipt)``: a 4x3 32FC1 map on ``/feature_node/boundary_map`` (bag times
    = receipt times in ns)."""

    def __init__(self, path):
        ts = get_typestore(Stores.ROS2_JAZZY)
        self.writer = Writer(path, version=8, storage_plugin=StoragePlugin.SQLITE3)
        self.writer.open()
        self.cam = self.writer.add_connection('/cam/image', 'sensor_msgs/msg/Image', typestore=ts)
        self.bnd = self.writer.add_connection('/feature_node/boundary_map', 'sensor_msgs/msg/Image', typestore=ts)

    def frame(self, stamp_ns: int, receipt_ns: int) -> None:
        rgb = np.zeros((48, 64, 3), np.uint8)
        self.writer.write(self.cam, receipt_ns, serialize_message(numpy_to_image(rgb, 'rgb8', header(stamp_ns))))

    def boundary(self, stamp_ns: int, receipt_ns: int, value: float = 0.5) -> None:
        m = numpy_to_image(np.full((3, 4), value, np.float32), '32FC1', header(stamp_ns))
        self.writer.write(self.bnd, receipt_ns, serialize_message(m))

    def close(self) -> None:
        self.writer.close()
