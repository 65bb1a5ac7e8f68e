"""photo_camera_node: geotagged photos (e.g. a drone survey) played as a camera.

Publishes, for each photo (``onboard.photos``; every message of one photo has the same
header stamp = the ROS time of publication):

* ``image`` (sensor_msgs/Image, rgb8, ``frame_id``), resized to ``width``;
* ``camera_info`` (sensor_msgs/CameraInfo: K from EXIF FocalLength and ``sensor_width_mm``
  or FocalLengthIn35mmFilm, scaled to the published size; the lens distortion the user gave in
  ``distortion_model`` / ``distortion``, default none; ``onboard.photo_messages``);
* ``~/fix`` (sensor_msgs/NavSatFix of the photo's GNSS tag, covariance from ``gnss_sigma_m``
  and ``gnss_vertical_sigma_m``);
* ``~/true_pose`` (geometry_msgs/PoseStamped in ``map_frame``, like flight_sim_node's), only
  with a georeference (``utm_zone``, ``utm_origin_e``, ``utm_origin_n`` as gplq_map's
  ``--utm-zone``/``--utm-origin``), yaw from DJI XMP (``yaw_source``).

``rate_hz`` > 0 plays the photos at that rate; 0 at their capture times (divided by
``time_scale``). The next photo is decoded in the background while one is shown. After the
last photo it starts over with ``loop``, else stops publishing (as after ``max_frames``).
With ``wait_for_node`` (the bringup's ``photos:=`` sets feature_node) the first photo waits
until that node of this namespace subscribes to ``image``.
"""
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, NavSatFix
from std_msgs.msg import Header

from gplq_ros.onboard.image_codec import numpy_to_image
from gplq_ros.onboard.messages import encode_true_pose
from gplq_ros.onboard.photo_messages import encode_camera_info, encode_photo_fix
from gplq_ros.onboard.photos import PhotoCameraConfig, PhotoError, PhotoSequence
from gplq_ros.nodes.params import Params, declare_qos
from gplq_ros.nodes.run import run_node


class PhotoCameraNode(Node):
    NODE_NAME = 'photo_camera_node'

    def __init__(self, **kw):
        super().__init__('photo_camera_node', **kw)
        p = self.params = Params(self)
        p.declare_settings(PhotoCameraConfig)
        qos = declare_qos(p, 'qos', 'best_effort', 5, 'the image, camera_info, fix and pose publishers')
        cfg = self.cfg = p.settings(PhotoCameraConfig)
        self.seq = PhotoSequence(cfg)
        self.pub_image = self.create_publisher(Image, 'image', qos)
        self.pub_info = self.create_publisher(CameraInfo, 'camera_info', qos)
        self.pub_fix = self.create_publisher(NavSatFix, '~/fix', qos)
        self.pub_pose = self.create_publisher(PoseStamped, '~/true_pose', qos) if self.seq.georef else None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix='photo_decode')
        self.pending = self.pool.submit(self.seq.frame, 0)
        self.sent = 0          # frames handled (published or skipped as unreadable)
        self.published = 0
        self.timer = None
        self.t0 = time.monotonic()
        self.waiting = bool(cfg.wait_for_node)
        if self.waiting:
            self.get_logger().info(f'waiting for {cfg.wait_for_node} to subscribe to {self.pub_image.topic_name}')
        self._arm(0.0)
        tilted = [m.path.name for m in self.seq.metas
                  if m.gimbal_pitch_deg is not None and abs(m.gimbal_pitch_deg + 90) > 10]
        if tilted and self.pub_pose:
            self.get_logger().warn(f'{len(tilted)} photos (first {tilted[0]}) are more than 10 deg off nadir: '
                                   '~/true_pose assumes a downward camera')
        w, h = self.seq.size
        self.get_logger().info(
            f'{len(self.seq)} photos from {cfg.photos} ({self.seq.metas[0].model or "camera"}), '
            f'{"at %g Hz" % cfg.rate_hz if cfg.rate_hz else "at the capture times x%g" % cfg.time_scale}, '
            f'{w}x{h}, fx {self.seq.k[0, 0]:.1f} px; publishing {self.pub_image.topic_name}'
            + (f', {self.pub_pose.topic_name} ({self.seq.georef.crs})' if self.pub_pose else ', no georeference'))

    def _arm(self, delay: float) -> None:
        if self.timer is not None:
            self.destroy_timer(self.timer)
        self.timer = self.create_timer(max(delay, 0.001), self.tick)

    def _stop(self, why: str) -> None:
        self.destroy_timer(self.timer)
        self.timer = None
        self.get_logger().info(f'{why}: {self.published} frames published; stopped')

    def _subscribed(self) -> bool:
        """Whether ``wait_for_node`` (in this namespace) subscribes to the image topic."""
        return any(i.node_name == self.cfg.wait_for_node and i.node_namespace == self.get_namespace()
                   for i in self.get_subscriptions_info_by_topic(self.pub_image.topic_name))

    def tick(self) -> None:
        if self.waiting:
            if not self._subscribed():
                return self._arm(0.1)
            self.waiting = False
            self.t0 = time.monotonic()          # the photos' times count from here
            self.get_logger().info(f'{self.cfg.wait_for_node} subscribed: playing')
        n, count = self.sent, len(self.seq)
        if self.cfg.max_frames and n >= self.cfg.max_frames:
            return self._stop(f'max_frames={self.cfg.max_frames}')
        if n >= count and not self.cfg.loop:
            return self._stop(f'all {count} photos played')
        try:
            frame = self.pending.result()
        except PhotoError as e:
            frame = None
            self.get_logger().error(f'skipped: {e}')
        if n + 1 < count or self.cfg.loop:
            self.pending = self.pool.submit(self.seq.frame, (n + 1) % count)
        if frame is not None:
            self.publish(frame)
        self.sent += 1
        self._arm(self.t0 + self.seq.due(self.sent) - time.monotonic())

    def publish(self, frame) -> None:
        stamp = self.get_clock().now().to_msg()
        m = frame.meta
        img = numpy_to_image(frame.rgb, 'rgb8')
        img.header.stamp, img.header.frame_id = stamp, self.cfg.frame_id
        h, w = frame.rgb.shape[:2]
        info = encode_camera_info(self.seq.k, w, h, img.header, self.cfg.distortion, self.cfg.distortion_model)
        fix = encode_photo_fix(m.lat, m.lon, m.alt_m, self.cfg.gnss_sigma_m, self.cfg.gnss_vertical_sigma_m,
                               img.header)
        self.pub_image.publish(img)
        self.pub_info.publish(info)
        self.pub_fix.publish(fix)
        if self.pub_pose is not None:
            self.pub_pose.publish(encode_true_pose(*self.seq.pose(m), Header(stamp=stamp,
                                                                             frame_id=self.cfg.map_frame)))
        self.published += 1

    def destroy_node(self):
        if getattr(self, 'pool', None) is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        return super().destroy_node()


def main(argv=None) -> int:
    return run_node(PhotoCameraNode, argv)


if __name__ == '__main__':
    sys.exit(main())
