"""A small rosbag2 bag (sqlite3) with a camera and the feature node's boundary maps (and, when
written, the localizer's poses, true poses and GNSS fixes), written with rosbags from
rclpy-serialized messages, for the bag evaluation's tests."""
import numpy as np
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import NavSatStatus
from std_msgs.msg import Header

from gplq_ros.onboard.image_codec import numpy_to_image
from gplq_ros.onboard.messages import encode_fix, encode_pose, encode_true_pose


def header(stamp_ns: int, frame_id: str = 'cam') -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = divmod(stamp_ns, 10 ** 9)
    return h


class CameraBag:
    """``frame(stamp, receipt)``: a 64x48 rgb8 camera image on ``/cam/image``;
    ``boundary(stamp, receipt)``: a 4x3 32FC1 map on ``/feature_node/boundary_map`` (bag times
    = receipt times in ns)."""

    def __init__(self, path):
        self.ts = get_typestore(Stores.ROS2_JAZZY)
        self.writer = Writer(path, version=8, storage_plugin=StoragePlugin.SQLITE3)
        self.writer.open()
        self.cam = self.writer.add_connection('/cam/image', 'sensor_msgs/msg/Image', typestore=self.ts)
        self.bnd = self.writer.add_connection('/feature_node/boundary_map', 'sensor_msgs/msg/Image', typestore=self.ts)
        self.conns = {}

    def _write(self, topic: str, msgtype: str, receipt_ns: int, msg) -> None:
        if topic not in self.conns:
            self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.ts)
        self.writer.write(self.conns[topic], receipt_ns, serialize_message(msg))

    def pose(self, stamp_ns: int, xy, sigma_m: float = 1.0, yaw: float = 0.0,
             topic: str = '/localizer_node/pose') -> None:
        """The localizer's PoseWithCovarianceStamped in map (isotropic ``sigma_m``), received at its stamp."""
        msg = encode_pose(xy, np.eye(2) * sigma_m ** 2, yaw, 0.01, 1e6, header(stamp_ns, 'map'))
        self._write(topic, 'geometry_msgs/msg/PoseWithCovarianceStamped', stamp_ns, msg)

    def true_pose(self, stamp_ns: int, xy, yaw: float = 0.0, topic: str = '/photo_camera_node/true_pose') -> None:
        msg = encode_true_pose(xy[0], xy[1], 40.0, yaw, header(stamp_ns, 'map'))
        self._write(topic, 'geometry_msgs/msg/PoseStamped', stamp_ns, msg)

    def fix(self, stamp_ns: int, lat: float, lon: float, status: int = NavSatStatus.STATUS_FIX,
            sigma_m: float = 2.0, topic: str = '/gps/fix') -> None:
        """A GNSS NavSatFix (``status`` -1: no fix), received at its stamp."""
        msg = encode_fix(lat, lon, np.eye(2) * sigma_m ** 2, 1e6, header(stamp_ns, 'gps'))
        msg.status.status = status
        self._write(topic, 'sensor_msgs/msg/NavSatFix', stamp_ns, msg)

    def frame(self, stamp_ns: int, receipt_ns: int) -> None:
        rgb = np.zeros((48, 64, 3), np.uint8)
        self.writer.write(self.cam, receipt_ns, serialize_message(numpy_to_image(rgb, 'rgb8', header(stamp_ns))))

    def boundary(self, stamp_ns: int, receipt_ns: int, value: float = 0.5) -> None:
        m = numpy_to_image(np.full((3, 4), value, np.float32), '32FC1', header(stamp_ns))
        self.writer.write(self.bnd, receipt_ns, serialize_message(m))

    def close(self) -> None:
        self.writer.close()
