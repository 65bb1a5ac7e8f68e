"""Layouts of the node output messages: the encoders the nodes publish with and the
decoders (duck-typed, so the same code reads live rclpy messages and messages deserialized
from a bag by ``rosbags``). ROS message classes only, no rclpy.

* ``~/boundary_map``, ``~/corner_map``: sensor_msgs/Image ``32FC1``; ``map_resolution:
  grid`` (default) = one value per ViT patch (e.g. 12x16 for a 640x480 camera with the
  168x224 graph), ``input`` = resized to the camera image (H x W). Boundary values in
  [0, 1]; the corner map is the Harris response of the feature map (unbounded, >= 0 at
  corners).
* ``~/corners``: sensor_msgs/PointCloud2, height 1, width N (best first), little-endian
  float32 fields ``u``, ``v`` (camera image pixels, x right / y down, pixel centres) and
  ``response``; read with ``np.frombuffer(msg.data, CORNER_DTYPE)``.
* ``~/descriptor``: sensor_msgs/Image ``32FC1``, height 1, width K*C (K clusters x C=384
  dims, cluster-major), L2-normalized (unit norm) VLAD; read with
  ``np.frombuffer(msg.data, '<f4')``. Two frames' place similarity is the dot product.
* ``~/camera_info``: sensor_msgs/CameraInfo of the published maps, when the camera
  publishes ``camera_info``: the camera's calibration scaled to the map size
  (``scale_camera_info``), so a map cell (column j, row i) is the ray of the camera pixel
  ``u = (j + 0.5) W / w - 0.5``, ``v = (i + 0.5) H / h - 0.5`` through the same K, D. When
  feature_node undistorted the frames (``undistort``, ``onboard.undistort``), the maps are in
  the undistorted pinhole camera with the camera's K: D = 0 (``plumb_bob``), R = I, P = [K | 0].
* localizer_node ``~/pose``: geometry_msgs/PoseWithCovarianceStamped in ``map``: x, y, yaw
  (a z-axis quaternion), covariance 6x6 row-major (x, y, z, roll, pitch, yaw) with the
  unmeasured z, roll, pitch at a large given variance; ``~/fix``: sensor_msgs/NavSatFix,
  altitude NaN, ENU covariance with the same large "up" variance (``encode_pose``,
  ``encode_fix``; ``decode_pose`` also reads the simulated flight's PoseStamped).
Every output carries the input image's header (stamp and frame_id).
"""
from typing import Tuple

import math

import cv2
import numpy as np
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from sensor_msgs.msg import CameraInfo, Image, NavSatFix, NavSatStatus, PointCloud2, PointField
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

from gplq_ros.onboard.image_codec import ImageFormatError, image_to_numpy, numpy_to_image

CORNER_FIELDS = ('u', 'v', 'response')
CORNER_DTYPE = np.dtype([(n, '<f4') for n in CORNER_FIELDS])
FLOAT32 = PointField.FLOAT32
MAP_RESOLUTIONS = ('grid', 'input')


def output_maps(out, resolution: str) -> Tuple[np.ndarray, np.ndarray]:
    """(boundary map, corner map) of engine ``Outputs`` at ``resolution``: ``grid`` = one
    value per patch, ``input`` = resized to the camera image."""
    if resolution == 'grid':
        return out.boundary, out.harris
    if resolution != 'input':
        raise ValueError(f'map_resolution={resolution!r}: one of {list(MAP_RESOLUTIONS)}')
    h, w = out.image_hw
    return out.boundary_full, cv2.resize(out.harris, (w, h), interpolation=cv2.INTER_LINEAR)


def encode_map(arr: np.ndarray, header=None) -> Image:
    return numpy_to_image(np.ascontiguousarray(arr, np.float32), '32FC1', header)


def encode_descriptor(descriptor: np.ndarray, header=None) -> Image:
    return encode_map(descriptor.reshape(1, -1), header)


def encode_corners(corners_px: np.ndarray, response: np.ndarray, header=None) -> PointCloud2:
    rec = np.zeros(len(corners_px), CORNER_DTYPE)
    if len(rec):
        rec['u'], rec['v'] = corners_px[:, 0], corners_px[:, 1]
        rec['response'] = response
    cloud = PointCloud2(height=1, width=len(rec), is_bigendian=False, point_step=CORNER_DTYPE.itemsize,
                        row_step=CORNER_DTYPE.itemsize * len(rec), is_dense=True,
                        fields=[PointField(name=n, offset=4 * i, datatype=FLOAT32, count=1)
                                for i, n in enumerate(CORNER_FIELDS)])
    if header is not None:
        cloud.header = header
    cloud.data = rec.tobytes()
    return cloud


def scale_intrinsics(m: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """A copy of K (3x3) or P (3x4) for the image resized by ``sx`` x ``sy`` about pixel
    centres: rows 0 and 1 scaled, and ``c' = (c + 0.5) s - 0.5 = c s + (s - 1) / 2``."""
    m = np.array(m, np.float64)
    m[0, :] *= sx
    m[0, 2] += (sx - 1) * 0.5 * m[2, 2]
    m[1, :] *= sy
    m[1, 2] += (sy - 1) * 0.5 * m[2, 2]
    return m


def encode_true_pose(x: float, y: float, z: float, yaw: float, header) -> PoseStamped:
    """A reference pose (geometry_msgs/PoseStamped, e.g. ``~/true_pose``): position and a
    z-axis quaternion of ``yaw``."""
    msg = PoseStamped()
    msg.header = header
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = float(x), float(y), float(z)
    q = msg.pose.orientation
    q.x, q.y, q.z, q.w = yaw_to_quaternion(yaw)
    return msg


def scale_camera_info(info, image_hw: Tuple[int, int], map_hw: Tuple[int, int], header=None,
                      undistorted: bool = False) -> CameraInfo:
    """The camera's CameraInfo (for images of ``image_hw``) for a map of ``map_hw`` covering
    the whole image: fx, skew, cx (and P's first row) scaled by ``w / W`` about pixel centres
    (``c' = (c + 0.5) s - 0.5``), fy, cy by ``h / H``; D, R and the distortion model unchanged
    (distortion acts on normalized coordinates). ``undistorted``: the maps were computed from
    the frame undistorted into the pinhole camera with the same K (``onboard.undistort``), so
    they are described by K, D = 0 (``plumb_bob``), R = I and P = [K | 0]. Note: image_proc's
    resize scales c without the half-pixel terms (up to half a cell apart on a coarse grid).
    Raises ImageFormatError naming the field for a CameraInfo that does not describe these
    images (size, binning, ROI) or an uncalibrated camera (K all zero)."""
    h0, w0 = image_hw
    mh, mw = map_hw
    if (int(info.height), int(info.width)) != (h0, w0):
        raise ImageFormatError('camera_info.width x height', f'{info.width}x{info.height}',
                               f'the image is {w0}x{h0}')
    if int(info.binning_x) > 1 or int(info.binning_y) > 1:
        raise ImageFormatError('camera_info.binning_x/y', f'{info.binning_x}/{info.binning_y}',
                               'binning is not supported (publish the CameraInfo of the binned image)')
    roi = info.roi
    if int(roi.width) and (int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height)) != (0, 0, w0, h0):
        raise ImageFormatError('camera_info.roi', (int(roi.x_offset), int(roi.y_offset), int(roi.width),
                                                   int(roi.height)), 'a region of interest is not supported')
    k = np.array(info.k, np.float64).reshape(3, 3)   # a copy: the input message stays as it was
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ImageFormatError('camera_info.k', f'fx={k[0, 0]}, fy={k[1, 1]}', 'not a calibrated camera')
    sx, sy = mw / w0, mh / h0
    p = np.array(info.p, np.float64).reshape(3, 4)
    if undistorted or not p.any():   # monocular cameras may leave P empty: P = [K | 0]
        p = np.zeros((3, 4))
        p[:, :3] = k
    k, p = scale_intrinsics(k, sx, sy), scale_intrinsics(p, sx, sy)
    model, d, r = ('plumb_bob', [0.0] * 5, np.eye(3).ravel().tolist()) if undistorted else \
        (info.distortion_model, list(info.d), list(info.r))
    out = CameraInfo(height=int(mh), width=int(mw), distortion_model=model, d=d, k=k.ravel().tolist(), r=r,
                     p=p.ravel().tolist())
    if header is not None:
        out.header = header
    return out


def decode_map(msg) -> np.ndarray:
    if msg.encoding != '32FC1':
        raise ImageFormatError('encoding', msg.encoding, 'a feature map must be 32FC1')
    return image_to_numpy(msg, max_pixels=None)


def decode_descriptor(msg) -> np.ndarray:
    d = decode_map(msg).reshape(-1)
    if msg.height != 1:
        raise ImageFormatError('height', msg.height, 'a descriptor is one row')
    return d


def decode_corners(msg) -> np.ndarray:
    """(N, 3) float32: u, v, response."""
    names = tuple(f.name for f in msg.fields)
    if names != CORNER_FIELDS or msg.point_step != CORNER_DTYPE.itemsize or msg.is_bigendian:
        raise ImageFormatError('fields', names, f'corners must be little-endian float32 {CORNER_FIELDS}')
    n = int(msg.width) * int(msg.height)
    if len(msg.data) != n * CORNER_DTYPE.itemsize:
        raise ImageFormatError('data', f'{len(msg.data)} bytes', f'must be {n} points x {CORNER_DTYPE.itemsize}')
    rec = np.frombuffer(bytes(msg.data), CORNER_DTYPE)
    return np.stack([rec['u'], rec['v'], rec['response']], axis=1) if n else np.zeros((0, 3), np.float32)


# feature output -> decoder, as the monitor and gplq_eval_bag name them
DECODERS = {'boundary': decode_map, 'corners': decode_corners, 'descriptor': decode_descriptor}


# monitor_node ``~/status``: std_msgs/Float64MultiArray, one value per name below, in this
# order (NaN = not measured yet); ``layout.dim[0].label`` repeats the names comma-separated.
STATUS_FIELDS = ('level', 'input_rate_hz', 'output_rate_hz', 'latency_p50_ms', 'latency_p95_ms',
                 'latency_max_ms', 'frames_in', 'frames_out', 'dropped', 'drop_rate', 'checks',
                 'descriptor_cosine', 'boundary_ssim', 'corner_repeatability', 'failed_in_a_row')


def encode_status(values: dict) -> Float64MultiArray:
    """``values`` holds every name of ``STATUS_FIELDS``; None is sent as NaN."""
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=','.join(STATUS_FIELDS), size=len(STATUS_FIELDS),
                                          stride=len(STATUS_FIELDS))]
    msg.data = [float('nan') if values[k] is None else float(values[k]) for k in STATUS_FIELDS]
    return msg


def decode_status(msg) -> dict:
    labels = msg.layout.dim[0].label.split(',') if msg.layout.dim else list(STATUS_FIELDS)
    return dict(zip(labels, (float(v) for v in msg.data)))


def yaw_to_quaternion(yaw: float) -> Tuple[float, float, float, float]:
    """(x, y, z, w) of a rotation by ``yaw`` about z."""
    return 0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)


def quaternion_to_yaw(q) -> float:
    """The rotation about z of a quaternion message (x, y, z, w)."""
    return float(np.arctan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y * q.y + q.z * q.z)))


def encode_pose(xy, cov_xy: np.ndarray, yaw: float, yaw_var: float, unmeasured: float,
                header) -> PoseWithCovarianceStamped:
    msg = PoseWithCovarianceStamped()
    msg.header = header
    msg.pose.pose.position.x, msg.pose.pose.position.y = float(xy[0]), float(xy[1])
    q = msg.pose.pose.orientation
    q.x, q.y, q.z, q.w = yaw_to_quaternion(yaw)
    cov = np.zeros((6, 6))
    cov[:2, :2] = cov_xy
    cov[2, 2] = cov[3, 3] = cov[4, 4] = unmeasured
    cov[5, 5] = yaw_var
    msg.pose.covariance = [float(v) for v in cov.ravel()]
    return msg


def decode_pose(msg):
    """(xy, 2x2 covariance or None, yaw) of a PoseWithCovarianceStamped or a PoseStamped."""
    pose = msg.pose.pose if hasattr(msg.pose, 'covariance') else msg.pose
    cov = np.asarray(msg.pose.covariance, np.float64).reshape(6, 6)[:2, :2] if hasattr(msg.pose, 'covariance') \
        else None
    return np.array([pose.position.x, pose.position.y]), cov, quaternion_to_yaw(pose.orientation)


def encode_fix(lat: float, lon: float, cov_en: np.ndarray, unmeasured: float, header) -> NavSatFix:
    msg = NavSatFix()
    msg.header = header
    msg.status.status, msg.status.service = NavSatStatus.STATUS_FIX, 0
    msg.latitude, msg.longitude, msg.altitude = float(lat), float(lon), float('nan')
    enu = np.zeros((3, 3))
    enu[:2, :2] = cov_en
    enu[2, 2] = unmeasured
    msg.position_covariance = [float(v) for v in enu.ravel()]
    msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_KNOWN
    return msg
