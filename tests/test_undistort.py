"""The camera's imperfections (#19). Lens undistortion: the onboard helper against known
distortions, its refusals, the published CameraInfo of undistorted maps, the simulated
camera's distortion, flight_sim_node's camera_info (real rclpy, in this process).
Photometric normalization: what it removes, and that map tiles get it as frames do."""
import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from gplq_ros.onboard.undistort import Calibration, UndistortError, Undistorter, undistortion_maps

W, H = 640, 480
K = np.array([[420.0, 0.0, 322.5], [0.0, 425.0, 236.0], [0.0, 0.0, 1.0]])
DISTORTIONS = {    # barrel, with tangential terms; 8 coefficients; a fisheye (k1..k4)
    'plumb_bob': [-0.25, 0.08, 0.001, -0.0015, -0.01],
    'rational_polynomial': [-0.2, 0.05, 0.0005, 0.0005, 0.0, 0.02, -0.01, 0.005],
    'equidistant': [0.05, -0.02, 0.01, -0.002],
}


def info(d, model='plumb_bob', k=K, width=W, height=H):
    return SimpleNamespace(width=width, height=height, k=np.asarray(k).ravel().tolist(), d=list(d),
                           distortion_model=model)


def grid_points(step=40, border=60):
    v, u = np.mgrid[border:H - border + 1:step, border:W - border + 1:step]
    return np.stack([u.ravel(), v.ravel()], 1).astype(np.float64)


def distort(pts: np.ndarray, d, model: str) -> np.ndarray:
    """Where the lens images the pinhole pixels ``pts`` (OpenCV's forward models)."""
    rays = cv2.undistortPoints(pts.reshape(-1, 1, 2), K, None).reshape(-1, 2)    # normalized pinhole coordinates
    if model == 'equidistant':
        return cv2.fisheye.distortPoints(rays.reshape(-1, 1, 2), K, np.array(d)).reshape(-1, 2)
    obj = np.hstack([rays, np.ones((len(rays), 1))])
    return cv2.projectPoints(obj, np.zeros(3), np.zeros(3), K, np.array(d))[0].reshape(-1, 2)


def dots(pts: np.ndarray, sigma=1.5) -> np.ndarray:
    """An rgb8 frame with a small Gaussian dot at each (sub-pixel) point."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.zeros((H, W), np.float32)
    for x, y in pts:
        x0, y0 = int(round(x)), int(round(y))
        sl = np.s_[max(y0 - 6, 0):y0 + 7, max(x0 - 6, 0):x0 + 7]
        img[sl] += np.exp(-((u[sl] - x) ** 2 + (v[sl] - y) ** 2) / (2 * sigma ** 2))
    g = np.clip(255 * img, 0, 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def centroids(rgb: np.ndarray, near: np.ndarray, r=7) -> np.ndarray:
    g = rgb[:, :, 0].astype(np.float64)
    out = []
    for x, y in near:
        x0, y0 = int(round(x)), int(round(y))
        win = g[y0 - r:y0 + r + 1, x0 - r:x0 + r + 1]
        v, u = np.mgrid[y0 - r:y0 + r + 1, x0 - r:x0 + r + 1]
        out.append(((win * u).sum() / win.sum(), (win * v).sum() / win.sum()))
    return np.array(out)


@pytest.mark.parametrize('model', sorted(DISTORTIONS))
def test_a_distorted_grid_is_undistorted_back_within_a_pixel(model):
    """Dots drawn where the lens images a regular grid come back to the grid (the pinhole
    camera with the same K) within a pixel; before undistortion they were many pixels off."""
    d = DISTORTIONS[model]
    grid = grid_points()
    seen = distort(grid, d, model)
    assert np.abs(seen - grid).max() > 8           # a real distortion
    out, undistorted = Undistorter()(dots(seen), info(d, model))
    assert undistorted and out.shape == (H, W, 3) and out.dtype == np.uint8
    err = np.hypot(*(centroids(out, grid) - grid).T)
    assert err.max() < 0.25, (model, err.max())          # measured: 0.05 px


def test_no_distortion_is_a_no_op_and_unknown_models_are_refused():
    rgb = np.random.default_rng(0).integers(0, 255, (H, W, 3), np.uint8)
    und = Undistorter()
    for d, model in (([0.0] * 5, 'plumb_bob'), ([], 'plumb_bob'), ([0.0] * 8, 'rational_polynomial'),
                     ([0.0] * 5, 'my_lens'), ([], '')):
        out, done = und(rgb, info(d, model))
        assert out is rgb and not done, (d, model)                  # the frame itself, untouched
    assert und.tables_computed == 0
    # equidistant with D = 0 is still the fisheye projection (r = f theta), not a pinhole: undistorted
    out, done = und(rgb, info([0.0] * 4, 'equidistant'))
    assert done and not np.array_equal(out, rgb)
    with pytest.raises(UndistortError, match=r"distortion_model='my_lens' with non-zero D: unknown model.*plumb_bob"):
        und(rgb, info([0.1, 0, 0, 0, 0], 'my_lens'))
    with pytest.raises(UndistortError, match='d has 3 values'):
        und(rgb, info([0.1, 0.0, 0.0], 'plumb_bob'))
    with pytest.raises(UndistortError, match='equidistant takes 4'):
        und(rgb, info([0.1] * 5, 'equidistant'))
    with pytest.raises(UndistortError, match='not finite'):
        und(rgb, info([float('nan')] + [0.0] * 4))
    with pytest.raises(UndistortError, match='k: fx=0.0.*not a calibrated camera'):
        und(rgb, info([0.1] + [0.0] * 4, k=np.zeros((3, 3))))
    with pytest.raises(UndistortError, match='camera_info.width x height=320x240: the image is 640x480'):
        und(rgb, info([0.1] + [0.0] * 4, width=320, height=240))


def test_tables_are_computed_once_per_calibration():
    rgb = np.zeros((H, W, 3), np.uint8)
    und = Undistorter()
    for _ in range(3):
        und(rgb, info(DISTORTIONS['plumb_bob']))         # a new message with the same values each frame
    assert und.tables_computed == 1
    und(rgb, info([-0.1, 0, 0, 0, 0]))
    assert und.tables_computed == 2
    assert Calibration.of(info([-0.1, 0, 0, 0, 0])) == Calibration.of(info([-0.1, 0, 0, 0, 0]))
    m1, m2 = undistortion_maps(Calibration.of(info(DISTORTIONS['plumb_bob'])))
    assert m1.shape == (H, W, 2) and m1.dtype == np.int16 and m2.shape == (H, W)


def test_camera_info_of_undistorted_maps():
    """The maps of an undistorted frame are in the pinhole camera with the camera's K: D = 0,
    R = I, P = [K | 0] (even when the camera's P was zoomed), scaled to the map like K."""
    from sensor_msgs.msg import CameraInfo

    from gplq_ros.onboard.messages import scale_camera_info
    p = np.hstack([K * [[0.8], [0.8], [1]], np.zeros((3, 1))])     # a rectified camera's zoomed P
    cam = CameraInfo(width=W, height=H, distortion_model='rational_polynomial', d=DISTORTIONS['rational_polynomial'],
                     k=K.ravel().tolist(), r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], p=p.ravel().tolist())
    raw = scale_camera_info(cam, (H, W), (12, 16))
    out = scale_camera_info(cam, (H, W), (12, 16), undistorted=True)
    assert list(raw.d) == DISTORTIONS['rational_polynomial'] and raw.distortion_model == 'rational_polynomial'
    assert (out.distortion_model, list(out.d), list(out.r)) == ('plumb_bob', [0.0] * 5, list(np.eye(3).ravel()))
    assert np.allclose(out.k, raw.k) and np.allclose(np.reshape(out.p, (3, 4))[:, :3], np.reshape(out.k, (3, 3)))
    assert not np.reshape(out.p, (3, 4))[:, 3].any() and list(cam.d) == DISTORTIONS['rational_polynomial']


def test_feature_status_warns_while_frames_are_not_undistorted():
    from gplq_ros.onboard.status import Level, feature_status
    assert feature_status(5, 0, {}, '', '') == (Level.OK, 'running')
    level, text = feature_status(5, 0, {}, '', "camera_info.distortion_model='x' with non-zero D: unknown model")
    assert level == Level.WARN and text.startswith('frames not undistorted: camera_info.distortion_model')
    assert feature_status(0, 2, {}, 'engine', 'why')[0] == Level.ERROR


def test_simulated_lens_distortion(images):
    """FlightConfig's default renders exactly today's pinhole frame; with k1 the frame is the
    plumb_bob distortion of it: undistorting it with the flight's K and D gives the pinhole
    frame back (up to interpolation), and a grid point moves where OpenCV's model says."""
    from gplq_ros.onboard.flight import DEFAULT_ORTHO, Flight, FlightConfig, render_window
    ortho = images[DEFAULT_ORTHO]
    plain = Flight(ortho, FlightConfig())
    assert plain.pinhole_uv is None and FlightConfig().distortion == (0.0,) * 5
    bent = Flight(ortho, FlightConfig(k1=-0.15))
    for t in (0.0, 17.3):
        pose = plain.pose(t)
        assert pose == bent.pose(t)                                   # same track, same true pose
        frame = plain.render(pose)
        assert np.array_equal(frame, render_window(ortho, pose.col, pose.row, pose.yaw, pose.scale, 640, 480))
    cfg = bent.cfg
    k = cfg.camera_matrix()
    assert k[0, 0] == pytest.approx(320 / math.tan(math.radians(35))) and (k[0, 2], k[1, 2]) == (319.5, 239.5)
    # the distorted frame's pixel (u, v) shows the pinhole pixel OpenCV's model images there
    u, v = bent.pinhole_uv
    proj = cv2.projectPoints(np.array([[(u[10, 20] - k[0, 2]) / k[0, 0], (v[10, 20] - k[1, 2]) / k[1, 1], 1.0]]),
                             np.zeros(3), np.zeros(3), k, np.array(cfg.distortion))[0].ravel()
    assert np.allclose(proj, (20, 10), atol=1e-6)                     # float64 Newton inverse, 20 iterations
    assert u[0, 0] < -40 and v[0, 0] < -30                            # barrel: the corner sees beyond the pinhole frame
    smooth = cv2.GaussianBlur(ortho, (0, 0), 6)                       # interpolation differences stay small
    sp, sb = Flight(smooth, FlightConfig()), Flight(smooth, FlightConfig(k1=-0.15))
    pose = sp.pose(17.3)
    pin, dist = sp.render(pose).astype(float), sb.render(pose)
    info_ = SimpleNamespace(width=640, height=480, k=k.ravel().tolist(), d=list(cfg.distortion),
                            distortion_model='plumb_bob')
    back, done = Undistorter()(dist, info_)
    inner = np.s_[20:-20, 20:-20]
    assert done and np.abs(back.astype(float) - pin)[inner].mean() < 0.1 * np.abs(dist - pin)[inner].mean()
    with pytest.raises(ValueError, match='k1=2'):
        FlightConfig(k1=2)
    with pytest.raises(ValueError, match='not invertible'):
        Flight(ortho, FlightConfig(k1=-0.9))


def test_flight_sim_node_publishes_its_camera_info(manifest):
    """flight_sim_node's camera_info: same header as each image, K from hfov_deg, D = k1, k2."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from helpers.ros import qos, spin_until
    from sensor_msgs.msg import CameraInfo, Image

    from gplq_ros.nodes.flight_sim_node import FlightSimNode
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = sub = None
    got = {'image': [], 'info': []}
    try:
        sub = rclpy.create_node('flight_info_sub', context=ctx)
        sub.create_subscription(Image, '/fs_cam/image', got['image'].append, qos(True))
        sub.create_subscription(CameraInfo, '/fs_cam/camera_info', got['info'].append, qos(True))
        node = FlightSimNode(context=ctx, cli_args=['--ros-args', '-r', 'image:=/fs_cam/image', '-r',
                                                    'camera_info:=/fs_cam/camera_info'],
                             parameter_overrides=[Parameter(k, value=v) for k, v in
                                                  {'k1': -0.15, 'k2': 0.02, 'max_frames': 3, 'rate_hz': 20.0,
                                                   'qos_reliability': 'reliable', 'qos_depth': 10}.items()])
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(sub)
        ex.add_node(node)
        spin_until(ex, 15.0, lambda: min(len(v) for v in got.values()) >= 2)
    finally:
        for n in (node, sub):
            if n is not None:
                n.destroy_node()
        rclpy.shutdown(context=ctx)
    assert min(len(v) for v in got.values()) >= 2, {k: len(v) for k, v in got.items()}
    stamps = {k: [(m.header.stamp.sec, m.header.stamp.nanosec) for m in v] for k, v in got.items()}
    assert set(stamps['info']) <= set(stamps['image'])
    info_ = got['info'][-1]
    assert (info_.width, info_.height, info_.distortion_model) == (640, 480, 'plumb_bob')
    assert list(info_.d) == [-0.15, 0.02, 0.0, 0.0, 0.0] and info_.header.frame_id == 'camera_optical_frame'
    assert info_.k[0] == pytest.approx(320 / math.tan(math.radians(35))) and info_.k[2] == 319.5


def test_photometric_normalization_removes_gains_and_reaches_the_targets(images):
    """grayworld: equal channel means, mean 118 / std 58; exposure and white-balance gains that clip
    nothing are removed to about a level; ``none`` is the frame itself; an unknown mode is refused."""
    from gplq_ros.onboard.photometric import TARGET_MEAN, TARGET_STD, apply_photometric, normalize_photometric
    rgb = np.ascontiguousarray(images['2019_YELL_2_541000_4977000_image_crop.png'][:480, :640])
    rgb = (rgb.astype(np.float32) * 0.6 + 40).astype(np.uint8)          # mid tones: the gains below clip nothing
    n = normalize_photometric(rgb).astype(np.float64)
    means = n.reshape(-1, 3).mean(0)
    assert np.allclose(means, means.mean(), atol=1.0) and abs(n.mean() - TARGET_MEAN) < 1.0
    assert abs(n.std() - TARGET_STD) < 1.0
    for gains in ((0.7, 0.7, 0.7), (1.2, 1.0, 0.8), (0.9, 1.1, 1.0)):
        changed = np.clip(rgb * np.array(gains), 0, 255).round().astype(np.uint8)
        assert np.abs(normalize_photometric(changed).astype(np.float64) - n).mean() < 1.5, gains
    assert apply_photometric(rgb, 'none') is rgb
    assert np.array_equal(apply_photometric(rgb, 'grayworld'), n.astype(np.uint8))
    with pytest.raises(ValueError, match="photometric='auto'"):
        apply_photometric(rgb, 'auto')


def test_map_tiles_are_normalized_as_the_map_config_says(images):
    """MapConfig.photometric reaches every tile before the graph (and is recorded in the map's
    config); an unknown value is refused."""
    from gplq_ros.onboard.placemap import MapConfig, MapMeta, build_map
    ortho = images['2019_YELL_2_541000_4977000_image_crop.png']
    seen = {}

    def describe(img):
        seen.setdefault(mode, []).append(img.mean())
        return np.ones(16, np.float32), np.zeros(img.shape[:2], np.float32)
    for mode in ('none', 'grayworld'):
        cfg = MapConfig(width=64, height=48, gsd_m=0.1, heights_m=(8.0,), stride_m=40.0, headings=2, pca_dim=8,
                        photometric=mode)
        pm = build_map(ortho, describe, cfg, MapMeta('b', 'w', 'v', 'g', 's', 'x', [], {}))
        assert pm.config.photometric == mode
    assert len(seen['none']) == len(seen['grayworld']) >= 4
    assert np.allclose(seen['grayworld'], 118.0, atol=2.0) and np.ptp(seen['none']) > 3.0   # clipping: +-2
    with pytest.raises(ValueError, match='photometric'):
        MapConfig(photometric='auto')
