"""Messages of the photo camera (photo_camera_node): CameraInfo and NavSatFix of one photo
(its reference pose is ``messages.encode_true_pose``, as flight_sim_node's); ROS message
classes only, no rclpy.

* ``camera_info``: sensor_msgs/CameraInfo of the published image: K from
  ``onboard.photos.intrinsics`` scaled to the published size, R = I, P = [K | 0], and the
  distortion the user gave (``PhotoCameraConfig.distortion_model``, ``distortion``; a photo
  carries no distortion calibration: by default ``plumb_bob`` with D = 0). D acts on
  normalized coordinates, so the same D holds at any published width.
* ``~/fix``: sensor_msgs/NavSatFix of the photo's EXIF GNSS tag: latitude, longitude,
  altitude as tagged (EXIF GPSAltitude: for DJI above mean sea level, not the WGS-84
  ellipsoid NavSatFix names; NaN when absent), ENU covariance diag(sigma_h^2, sigma_h^2,
  sigma_v^2) from the node's assumed consumer-GNSS sigmas (``COVARIANCE_TYPE_APPROXIMATED``:
  the photo holds no receiver accuracy), ``unmeasured`` for the vertical without altitude.
* ``~/true_pose``: ``messages.encode_true_pose`` (as flight_sim_node's) in ``map``: x, y
  from the GNSS position, z = relative altitude, yaw (``onboard.photos``: yaw = -heading).
  It is GNSS-derived: a reference with metres of error.
"""
import math

import numpy as np
from sensor_msgs.msg import CameraInfo, NavSatFix

from gplq_ros.onboard.messages import encode_fix

UNMEASURED = 1e6


def encode_camera_info(k: np.ndarray, width: int, height: int, header=None, d=(0.0,) * 5,
                       distortion_model: str = 'plumb_bob') -> CameraInfo:
    """A monocular camera's CameraInfo: K, distortion ``d`` of ``distortion_model``, R = I,
    P = [K | 0]."""
    k = np.asarray(k, np.float64).reshape(3, 3)
    p = np.zeros((3, 4))
    p[:, :3] = k
    msg = CameraInfo(width=int(width), height=int(height), distortion_model=distortion_model,
                     d=[float(v) for v in d], k=k.ravel().tolist(), r=np.eye(3).ravel().tolist(),
                     p=p.ravel().tolist())
    if header is not None:
        msg.header = header
    return msg


def encode_photo_fix(lat: float, lon: float, alt_m, sigma_h_m: float, sigma_v_m: float, header) -> NavSatFix:
    has_alt = alt_m is not None and math.isfinite(alt_m)
    msg = encode_fix(lat, lon, np.eye(2) * sigma_h_m ** 2, sigma_v_m ** 2 if has_alt else UNMEASURED, header)
    msg.altitude = float(alt_m) if has_alt else float('nan')
    msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_APPROXIMATED
    return msg
