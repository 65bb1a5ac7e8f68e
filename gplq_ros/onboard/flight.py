"""A simulated drone flight over a real orthophoto (the camera source for demos and tests).

The camera looks straight down. Its window on the orthophoto moves along a Lissajous
track inside the image (margins keep the whole rotated window inside), turns with the
direction of travel plus a slow yaw oscillation, and changes height (ground footprint
scale) sinusoidally. ``pose(t)`` is the true window pose; ``render(t)`` the camera frame.

Pose convention (REP 103, ``map`` frame on the orthophoto): x east = column * gsd,
y north = -row * gsd (metres, origin at the orthophoto's top-left pixel), z = height
above ground from the footprint and the horizontal field of view, yaw = rotation of the
camera's x axis (image right) from east, counter-clockwise positive.

Camera model: a pinhole with ``FlightConfig.camera_matrix()`` (fx = fy from the horizontal
field of view, principal point at the image centre), optionally with radial lens distortion
``k1``, ``k2`` (ROS/OpenCV ``plumb_bob`` with D = k1, k2, 0, 0, 0; k1 < 0 = barrel): the
frame's pixel (u, v) then shows the ground point of the undistorted pixel that the
distortion moves to (u, v). ``k1 = k2 = 0`` (default) renders exactly the pinhole frame.
The window's margin on the orthophoto is the pinhole's; with barrel distortion the frame's
corners see up to about 20 % further (k1 = -0.15) and may reach the orthophoto's reflected
border at the track's extremes.
"""
import math
from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np

from gplq_ros.onboard.aiding import OdomPose

DEFAULT_ORTHO = '2019_YELL_2_528000_4978000_image_crop2.png'   # NEON 10 cm forest/meadow, 2472x2299 (gplq_assets)


@dataclass(frozen=True)
class FlightConfig:
    width: int = 640
    height: int = 480
    gsd_m: float = 0.1              # orthophoto metres per pixel (NEON tiles: 10 cm)
    speed_mps: float = 4.0          # mean ground speed
    height_m: float = 40.0          # mean height above ground
    height_amp: float = 0.25        # relative height oscillation
    yaw_amp_deg: float = 20.0       # yaw oscillation around the direction of travel
    hfov_deg: float = 70.0          # horizontal field of view of the simulated camera
    seed: int = 0
    k1: float = 0.0                 # radial lens distortion (plumb_bob k1, k2); 0 = ideal pinhole
    k2: float = 0.0

    def __post_init__(self):
        checks = {'width': 16 <= self.width <= 8192, 'height': 16 <= self.height <= 8192,
                  'gsd_m': 0 < self.gsd_m <= 10, 'speed_mps': 0 <= self.speed_mps <= 100,
                  'height_m': 1 <= self.height_m <= 1000, 'height_amp': 0 <= self.height_amp < 0.9,
                  'yaw_amp_deg': 0 <= self.yaw_amp_deg <= 180, 'hfov_deg': 10 <= self.hfov_deg <= 170,
                  'k1': -1 <= self.k1 <= 1, 'k2': -1 <= self.k2 <= 1}
        for k, ok in checks.items():
            if not ok:
                raise ValueError(f'{k}={getattr(self, k)}: out of range')

    def camera_matrix(self) -> np.ndarray:
        """K (3x3) of the simulated camera: fx = fy = (width / 2) / tan(hfov / 2), principal
        point at the image centre ((width - 1) / 2, (height - 1) / 2)."""
        f = self.width / (2 * math.tan(math.radians(self.hfov_deg) / 2))
        return np.array([[f, 0, (self.width - 1) / 2], [0, f, (self.height - 1) / 2], [0, 0, 1]])

    @property
    def distortion(self) -> Tuple[float, ...]:
        """D of the simulated camera (plumb_bob: k1, k2, t1, t2, k3)."""
        return (float(self.k1), float(self.k2), 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class WindowPose:
    t: float
    col: float        # window centre on the orthophoto, pixels
    row: float
    yaw: float        # radians
    scale: float      # orthophoto pixels per camera pixel
    x_m: float
    y_m: float
    z_m: float


class Flight:
    def __init__(self, ortho_rgb: np.ndarray, cfg: FlightConfig = FlightConfig()):
        self.ortho = np.ascontiguousarray(ortho_rgb)
        self.cfg = cfg
        oh, ow = self.ortho.shape[:2]
        self.scale0 = scale_at(cfg.height_m, cfg.width, cfg.hfov_deg, cfg.gsd_m)   # at the mean height
        smax = self.scale0 * (1 + cfg.height_amp)
        half_diag = 0.5 * math.hypot(cfg.width, cfg.height) * smax
        self.margin = half_diag + 2
        if 2 * self.margin >= min(oh, ow):
            raise ValueError(f'orthophoto {ow}x{oh} px is too small for a {cfg.width}x{cfg.height} window at '
                             f'height_m={cfg.height_m * (1 + cfg.height_amp):.0f} (needs > {2 * self.margin:.0f} px)')
        self.ax, self.ay = (ow - 2 * self.margin) / 2, (oh - 2 * self.margin) / 2
        rng = np.random.default_rng(cfg.seed)
        self.phase = rng.uniform(0, 2 * math.pi, 3)
        # angular rates so that the mean ground speed is about speed_mps
        track_px = 2 * math.pi * math.hypot(self.ax, self.ay) / math.sqrt(2)
        self.w = 2 * math.pi * cfg.speed_mps / max(track_px * cfg.gsd_m, 1e-9)
        self.pinhole_uv = distorted_to_pinhole(cfg) if cfg.k1 or cfg.k2 else None

    def pose(self, t: float) -> WindowPose:
        c = self.cfg
        w, p = self.w, self.phase
        oh, ow = self.ortho.shape[:2]
        col = ow / 2 + self.ax * math.sin(w * t + p[0])
        row = oh / 2 + self.ay * math.sin(1.5 * w * t + p[1])
        dcol, drow = self.ax * w * math.cos(w * t + p[0]), 1.5 * self.ay * w * math.cos(1.5 * w * t + p[1])
        heading = math.atan2(-drow, dcol)   # east = 0, north = +pi/2
        yaw = heading + math.radians(c.yaw_amp_deg) * math.sin(0.3 * t + p[2])
        scale = self.scale0 * (1 + c.height_amp * math.sin(0.2 * t + p[2]))
        z = scale * c.width * c.gsd_m / (2 * math.tan(math.radians(c.hfov_deg) / 2))
        return WindowPose(t, col, row, yaw, scale, col * c.gsd_m, -row * c.gsd_m, z)

    def affine(self, pose: WindowPose) -> np.ndarray:
        return window_affine(pose.col, pose.row, pose.yaw, pose.scale, self.cfg.width, self.cfg.height)

    def render(self, pose: WindowPose) -> np.ndarray:
        """The camera frame at ``pose`` (with the configured lens distortion, if any)."""
        if self.pinhole_uv is None:
            return render_window(self.ortho, pose.col, pose.row, pose.yaw, pose.scale, self.cfg.width,
                                 self.cfg.height)
        a = self.affine(pose)
        u, v = self.pinhole_uv
        mx = (a[0, 0] * u + a[0, 1] * v + a[0, 2]).astype(np.float32)
        my = (a[1, 0] * u + a[1, 1] * v + a[1, 2]).astype(np.float32)
        return cv2.remap(self.ortho, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def distorted_to_pinhole(cfg: FlightConfig, iters: int = 20) -> Tuple[np.ndarray, np.ndarray]:
    """For every pixel (u, v) of the distorted frame, the pinhole pixel whose ray the lens
    distortion (``cfg.k1``, ``cfg.k2``) images there: r_d = r (1 + k1 r^2 + k2 r^4) inverted by
    Newton's method on the normalized radius. Raises ValueError when the distortion is not
    invertible over the frame (it folds over before the image corner)."""
    k = cfg.camera_matrix()
    f, cx, cy = k[0, 0], k[0, 2], k[1, 2]
    v, u = np.mgrid[0:cfg.height, 0:cfg.width].astype(np.float64)
    x, y = (u - cx) / f, (v - cy) / f
    rd = np.hypot(x, y)
    r = rd.copy()
    for _ in range(iters):
        g = r * (1 + cfg.k1 * r ** 2 + cfg.k2 * r ** 4) - rd
        dg = 1 + 3 * cfg.k1 * r ** 2 + 5 * cfg.k2 * r ** 4
        if (dg <= 0).any():
            break
        r = r - g / dg
    resid = np.abs(r * (1 + cfg.k1 * r ** 2 + cfg.k2 * r ** 4) - rd)
    if (dg <= 0).any() or not np.isfinite(r).all() or resid.max() > 1e-9:
        raise ValueError(f'k1={cfg.k1}, k2={cfg.k2}: the distortion is not invertible over the '
                         f'{cfg.width}x{cfg.height} frame')
    s = np.divide(r, rd, out=np.ones_like(r), where=rd > 0)
    return cx + f * x * s, cy + f * y * s


def scale_at(height_m: float, width: int, hfov_deg: float, gsd_m: float) -> float:
    """Orthophoto pixels per camera pixel for a nadir camera ``height_m`` above the ground."""
    return 2 * height_m * math.tan(math.radians(hfov_deg) / 2) / (width * gsd_m)


def window_affine(col: float, row: float, yaw: float, scale: float, width: int, height: int) -> np.ndarray:
    """2x3 map from camera pixels (u right, v down) to orthophoto pixels (col, row) for a
    ``width`` x ``height`` window centred at (col, row), turned by ``yaw``."""
    c, s = math.cos(yaw), math.sin(yaw)
    # image right = (cos yaw, -sin yaw) in (col, row); image down = (sin yaw, cos yaw)
    a = scale * np.array([[c, s], [-s, c]])
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    t = np.array([col, row]) - a @ centre
    return np.hstack([a, t[:, None]])


def render_window(ortho: np.ndarray, col: float, row: float, yaw: float, scale: float, width: int,
                  height: int) -> np.ndarray:
    """The camera frame of a nadir camera at window pose (col, row, yaw, scale)."""
    return cv2.warpAffine(ortho, window_affine(col, row, yaw, scale, width, height), (width, height),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)


def odometry_along(xy: np.ndarray, yaw: np.ndarray, drift_frac: float = 0.05, rotation_deg: float = 25.0,
                   seed: int = 0) -> list:
    """A simulated odometry (VIO) along a true track: the poses ``xy`` (N, 2) / ``yaw`` (N,) of
    the map expressed in an odometry frame rotated by ``rotation_deg`` with its origin at the
    first pose, plus a random walk: each step's displacement gets a Gaussian error of standard
    deviation ``drift_frac`` times its length per axis. Returns ``onboard.aiding.OdomPose``s
    (for benchmarks of the localizer's odometry input; a real drone's comes from its VIO)."""
    xy, yaw = np.asarray(xy, float), np.asarray(yaw, float)
    rng = np.random.default_rng(seed)
    r = math.radians(rotation_deg)
    c, s = math.cos(-r), math.sin(-r)
    rot = np.array([[c, -s], [s, c]])
    steps = np.diff(xy, axis=0)
    noisy = steps + rng.normal(0.0, 1.0, steps.shape) * drift_frac * np.hypot(*steps.T)[:, None]
    track = np.vstack([np.zeros(2), np.cumsum(noisy, axis=0)]) @ rot.T
    return [OdomPose(float(p[0]), float(p[1]), float(a - r)) for p, a in zip(track, yaw)]
