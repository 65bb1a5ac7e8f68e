"""Lens undistortion of camera frames from the camera's sensor_msgs/CameraInfo (numpy and
OpenCV only; no rclpy, no torch). feature_node and monitor_node undistort each frame before
the engine, so that the boundary map the localizer compares with the map tiles (rendered
from a distortion-free orthophoto) is in an ideal pinhole camera.

**Models** (ROS ``sensor_msgs/distortion_models``, OpenCV's conventions):

* ``plumb_bob`` (D = k1, k2, t1, t2, k3) and ``rational_polynomial`` (D = k1, k2, t1, t2,
  k3, k4, k5, k6): ``cv2.initUndistortRectifyMap``; D may have 4, 5, 8, 12 or 14 values (the
  lengths OpenCV's model takes). All-zero or empty D needs nothing (``not needed``).
* ``equidistant`` (D = k1, k2, k3, k4; the fisheye model): ``cv2.fisheye``. Even D = 0 is a
  distortion here (the equidistant projection r = f theta is not a pinhole's r = f tan
  theta), so an equidistant camera is always undistorted.
* any other model with non-zero D is refused (``UndistortError`` naming the model); so is a
  calibration that does not describe the frame (size), a K that is not a camera's, or a
  non-finite D. The caller then processes the frame as it is and says so (feature_node:
  counted, logged once, WARN; the published ``~/camera_info`` then keeps the camera's D,
  which still describes the maps).

**The undistorted camera** keeps K: the new camera matrix is the camera's K (not the P of
image_proc's ``image_rect``, which for camera_calibration's monocular calibrations is
zoomed by its ``alpha``), R is ignored (a monocular camera's R is the identity). The
undistorted frame is therefore the image of the same camera, same orientation, same
focal length and principal point, without distortion: its CameraInfo is K, D = 0
(``plumb_bob``), R = I, P = [K | 0] (``messages.scale_camera_info(..., undistorted=True)``).
For barrel distortion (k1 < 0) every output pixel has a source in the frame (the frame's
outermost rim is cut off); for pincushion distortion or a wide fisheye the output's corners
fall outside the frame and repeat its edge pixels (``BORDER_REPLICATE``: no artificial
black edge for the boundary map to respond to).

The remap tables are computed once per calibration (``Undistorter`` keeps the newest; a new
CameraInfo with the same values reuses them) and applied with ``cv2.remap`` (bilinear).
"""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

__all__ = ['MODELS', 'UndistortError', 'Calibration', 'undistortion_maps', 'Undistorter']

MODELS = ('plumb_bob', 'rational_polynomial', 'equidistant')
_OPENCV_LENGTHS = (4, 5, 8, 12, 14)


class UndistortError(ValueError):
    """A frame that cannot be undistorted; the message names the field and the value."""


@dataclass(frozen=True)
class Calibration:
    """The part of a CameraInfo undistortion needs (hashable: the key of the remap tables)."""
    width: int
    height: int
    k: Tuple[float, ...]          # row-major 3x3
    d: Tuple[float, ...]
    model: str

    @classmethod
    def of(cls, info) -> 'Calibration':
        """From a sensor_msgs/CameraInfo (or any object with its fields)."""
        return cls(int(info.width), int(info.height), tuple(float(v) for v in info.k),
                   tuple(float(v) for v in info.d), str(info.distortion_model))

    @property
    def k_matrix(self) -> np.ndarray:
        return np.array(self.k, np.float64).reshape(3, 3)

    def needs_undistortion(self) -> bool:
        """True when frames of this camera must be remapped; False for a pinhole camera (no or
        all-zero D of a non-fisheye model). Raises UndistortError for a distortion it cannot
        undo: an unknown model with non-zero D, a D of the wrong length, non-finite values."""
        if not all(math.isfinite(v) for v in self.d):
            raise UndistortError(f'camera_info.d={list(self.d)}: not finite')
        if self.model == 'equidistant':
            if len(self.d) not in (0, 4):
                raise UndistortError(f'camera_info.d has {len(self.d)} values: equidistant takes 4 (k1..k4)')
            return True
        if not any(self.d):
            return False
        if self.model not in MODELS:
            raise UndistortError(f'camera_info.distortion_model={self.model!r} with non-zero D: unknown model, '
                                 f'frames are not undistorted (supported: {", ".join(MODELS)})')
        if len(self.d) not in _OPENCV_LENGTHS:
            raise UndistortError(f'camera_info.d has {len(self.d)} values: {self.model} takes 5 (plumb_bob) or 8 '
                                 '(rational_polynomial)')
        return True

    def check(self) -> None:
        """Raise UndistortError when K is not a camera matrix."""
        k = self.k_matrix
        if not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0 or k[2, 2] != 1:
            raise UndistortError(f'camera_info.k: fx={k[0, 0]}, fy={k[1, 1]}, k[2][2]={k[2, 2]}: '
                                 'not a calibrated camera')
        if self.width <= 0 or self.height <= 0:
            raise UndistortError(f'camera_info.width x height={self.width}x{self.height}: not an image size')


def undistortion_maps(cal: Calibration) -> Tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` tables (fixed-point CV_16SC2 + CV_16UC1) that take a frame of camera
    ``cal`` to the undistorted pinhole camera with the same K (see the module notes)."""
    cal.check()
    k = cal.k_matrix
    size = (cal.width, cal.height)
    if cal.model == 'equidistant':
        d = np.array(cal.d or (0.0,) * 4, np.float64).reshape(4, 1)
        return cv2.fisheye.initUndistortRectifyMap(k, d, np.eye(3), k, size, cv2.CV_16SC2)
    return cv2.initUndistortRectifyMap(k, np.array(cal.d, np.float64), None, k, size, cv2.CV_16SC2)


class Undistorter:
    """Undistorts frames with the newest calibration; the tables are computed when the
    calibration changes. Not thread-safe: call it from one thread (the worker)."""

    def __init__(self):
        self._cal: Optional[Calibration] = None
        self._maps: Optional[Tuple[np.ndarray, np.ndarray]] = None   # None: the calibration needs none
        self.tables_computed = 0

    def __call__(self, rgb: np.ndarray, info) -> Tuple[np.ndarray, bool]:
        """(frame, undistorted): the frame in the undistorted camera and True, or the frame
        itself and False when camera ``info`` (a CameraInfo) has no distortion. Raises
        UndistortError when the distortion cannot be undone (the frame is then unchanged)."""
        cal = Calibration.of(info)
        if cal != self._cal:
            self._cal, self._maps = None, None
            maps = undistortion_maps(cal) if cal.needs_undistortion() else None
            self._cal, self._maps = cal, maps
            self.tables_computed += maps is not None
        if self._maps is None:
            return rgb, False
        h, w = rgb.shape[:2]
        if (h, w) != (cal.height, cal.width):
            raise UndistortError(f'camera_info.width x height={cal.width}x{cal.height}: the image is {w}x{h}')
        return cv2.remap(rgb, self._maps[0], self._maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE), True
