"""flight_sim_node: a simulated drone camera over a real orthophoto (demos and tests).

Publishes ``image`` (sensor_msgs/Image, rgb8, ``frame_id`` a camera optical frame, stamp =
the ROS time of the capture) at ``rate_hz``, and the true window pose on ``~/true_pose``
(geometry_msgs/PoseStamped, frame ``map`` on the orthophoto, same stamp as the image; see
``gplq_ros.onboard.flight`` for the convention) and the camera's calibration on
``camera_info`` (sensor_msgs/CameraInfo, same header as the image: K from ``hfov_deg``,
``plumb_bob`` D = k1, k2, 0, 0, 0 of the simulated lens distortion ``k1``, ``k2``; 0 = a
pinhole). Stops after ``max_frames`` if > 0.
"""
import sys
import time
from pathlib import Path

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from gplq_ros.onboard.flight import DEFAULT_ORTHO, Flight, FlightConfig
from gplq_ros.onboard.image_codec import numpy_to_image
from gplq_ros.onboard.messages import encode_true_pose
from gplq_ros.onboard.photo_messages import encode_camera_info
from gplq_ros.onboard.paths import default_images_dir
from gplq_ros.onboard.preprocess import read_rgb
from gplq_ros.nodes.params import Params, declare_qos
from gplq_ros.nodes.run import run_node


class FlightSimNode(Node):
    NODE_NAME = 'flight_sim_node'

    def __init__(self, **kw):
        super().__init__('flight_sim_node', **kw)
        p = self.params = Params(self)
        image = p.declare('image', '', f'orthophoto to fly over; empty: {DEFAULT_ORTHO} from the asset cache',
                          read_only=True)
        rate = p.declare('rate_hz', 10.0, 'camera frame rate', (0.1, 120.0), read_only=True)
        self.frame_id = p.declare('frame_id', 'camera_optical_frame', 'frame_id of the images (optical frame)',
                                  read_only=True)
        self.map_frame = p.declare('map_frame', 'map', 'frame_id of the true pose', read_only=True)
        self.max_frames = p.declare('max_frames', 0, 'stop publishing after this many frames (0: never)',
                                    (0, 10 ** 9), read_only=True)
        cfg = FlightConfig(
            width=p.declare('width', 640, 'image width, pixels', (16, 8192), read_only=True),
            height=p.declare('height', 480, 'image height, pixels', (16, 8192), read_only=True),
            gsd_m=p.declare('gsd_m', 0.1, 'orthophoto ground sampling distance, m/pixel', (0.001, 10.0),
                            read_only=True),
            speed_mps=p.declare('speed_mps', 4.0, 'mean ground speed, m/s', (0.0, 100.0), read_only=True),
            height_m=p.declare('height_m', 40.0, 'mean height above ground, m', (1.0, 1000.0), read_only=True),
            height_amp=p.declare('height_amp', 0.25, 'relative height oscillation', (0.0, 0.89), read_only=True),
            yaw_amp_deg=p.declare('yaw_amp_deg', 20.0, 'yaw oscillation about the track, degrees', (0.0, 180.0),
                                  read_only=True),
            hfov_deg=p.declare('hfov_deg', 70.0, 'horizontal field of view, degrees', (10.0, 170.0),
                               read_only=True),
            seed=p.declare('seed', 0, 'track phase seed', (0, 2 ** 31 - 1), read_only=True),
            k1=p.declare('k1', 0.0, 'radial lens distortion k1 of the simulated camera (plumb_bob; < 0: barrel; '
                         '0: pinhole)', (-1.0, 1.0), read_only=True),
            k2=p.declare('k2', 0.0, 'radial lens distortion k2 of the simulated camera (plumb_bob)', (-1.0, 1.0),
                         read_only=True))
        qos = declare_qos(p, 'qos', 'best_effort', 5, 'the image, camera_info and pose publishers')
        path = Path(image) if image else default_images_dir() / DEFAULT_ORTHO
        if not path.is_file():
            raise ValueError(f'parameter image={str(path)!r}: file not found (run gplq_assets)')
        self.flight = Flight(read_rgb(path), cfg)
        self.pub_image = self.create_publisher(Image, 'image', qos)
        self.pub_pose = self.create_publisher(PoseStamped, '~/true_pose', qos)
        self.pub_info = self.create_publisher(CameraInfo, 'camera_info', qos)
        self.info = encode_camera_info(cfg.camera_matrix(), cfg.width, cfg.height, d=cfg.distortion)
        self.sent = 0
        self.t0 = time.monotonic()
        self.timer = self.create_timer(1.0 / rate, self.tick)
        self.get_logger().info(f'flying over {path.name} at {rate:g} Hz, {cfg.width}x{cfg.height}, '
                               f'publishing {self.pub_image.topic_name}')

    def tick(self) -> None:
        if self.max_frames and self.sent >= self.max_frames:
            self.timer.cancel()
            return
        pose = self.flight.pose(time.monotonic() - self.t0)
        frame = self.flight.render(pose)
        stamp = self.get_clock().now().to_msg()
        img = numpy_to_image(frame, 'rgb8')
        img.header.stamp, img.header.frame_id = stamp, self.frame_id
        self.pub_image.publish(img)
        self.info.header = img.header
        self.pub_info.publish(self.info)
        self.pub_pose.publish(encode_true_pose(pose.x_m, pose.y_m, pose.z_m, pose.yaw,
                                               Header(stamp=stamp, frame_id=self.map_frame)))
        self.sent += 1


def main(argv=None) -> int:
    return run_node(FlightSimNode, argv)


if __name__ == '__main__':
    sys.exit(main())
