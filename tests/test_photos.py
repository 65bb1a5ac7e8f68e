"""The photo camera (issue #19): EXIF/XMP reader, intrinsics, georeference, messages and
photo_camera_node on real DJI photos (../shared/datasets/brighton_beach, skipped when
absent) and on small synthetic geotagged JPEGs."""
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from gplq_ros.onboard import geo
from gplq_ros.onboard import photos as ph

REPO = Path(__file__).resolve().parents[1]
BRIGHTON = Path(os.environ.get('GPLQ_BRIGHTON_BEACH', REPO.parent / 'shared' / 'datasets' / 'brighton_beach'))
PHOTOS = BRIGHTON / 'images'
needs_brighton = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f'real DJI photos not here: {PHOTOS} is absent '
                                    '(brighton_beach dataset, ../shared/datasets)')
ZONE, ORIGIN = '15N', (576600.0, 5188100.0)     # a map origin near the Brighton Beach survey (UTM 15N)


def write_photo(path: Path, lat=(33.0, 52.0, 12.5), lat_ref='S', lon=(151.0, 12.0, 30.0), lon_ref='E',
                time_text='2020:01:02 03:04:05', subsec='25', focal=4.5, f35=24, alt=12.5, below_sea=True,
                xmp=b'<x:xmpmeta><rdf:Description><drone-dji:GimbalYawDegree>-30.5</drone-dji:GimbalYawDegree>'
                    b'</rdf:Description></x:xmpmeta>', size=(40, 30)):
    """A JPEG with EXIF (Pillow writes big-endian TIFF; DJI writes little-endian) and XMP."""
    Image = pytest.importorskip('PIL.Image', reason='Pillow writes the synthetic EXIF')
    rgb = np.zeros((size[1], size[0], 3), np.uint8)
    rgb[:, : size[0] // 2] = (200, 30, 10)
    ex = Image.Exif()
    ex[0x010F], ex[0x0110] = 'TestMake', 'TestCam'
    e = ex.get_ifd(0x8769)
    for tag, v in ((0x9003, time_text), (0x9291, subsec), (0x920A, focal), (0xA405, f35)):
        if v is not None:
            e[tag] = v
    if lat is not None:
        g = ex.get_ifd(0x8825)
        g[1], g[2], g[3], g[4] = lat_ref, lat, lon_ref, lon
        if alt is not None:
            g[5], g[6] = (b'\x01' if below_sea else b'\x00'), alt
    kw = {'xmp': xmp} if xmp else {}
    Image.fromarray(rgb).save(path, exif=ex, **kw)
    return path


@needs_brighton
def test_reader_on_real_dji_photos():
    """18 Phantom 3 photos: size from the JPEG, focal 3.61 mm (20 mm equivalent), GPS near
    Duluth, capture times increasing (7-9 s apart in this survey), DJI yaw and altitude."""
    metas = [ph.read_photo(p) for p in ph.list_photos(PHOTOS)]
    assert len(metas) == 18
    for m in metas:
        assert (m.width, m.height) == (4000, 2250) and m.model == 'FC300S' and m.make == 'DJI'
        assert m.focal_mm == pytest.approx(3.61) and m.focal_35mm == 20
        assert 46.7 < m.lat < 46.9 and -92.2 < m.lon < -91.9, (m.path.name, m.lat, m.lon)
        assert 190 < m.alt_m < 210 and 39 < m.relative_alt_m < 41.5
        assert -90.5 < m.gimbal_pitch_deg < -89.5
        assert -180 <= m.heading_deg('gimbal') <= 180 and -180 <= m.heading_deg('flight') <= 180
    gaps = np.diff([m.time_s for m in metas])
    assert (gaps > 0).all() and 6 <= np.median(gaps) <= 9, gaps
    first = metas[0]
    assert first.dji('GimbalYawDegree') == 45.0 and first.dji('FlightYawDegree') == 46.0
    assert first.yaw('gimbal') == pytest.approx(math.radians(-45.0))
    # the same tags as Pillow reads them (where installed)
    Image = pytest.importorskip('PIL.Image')
    ex = Image.open(first.path).getexif()
    gps = ex.get_ifd(0x8825)
    lat = sum(float(v) / 60 ** i for i, v in enumerate(gps[2]))
    lon = -sum(float(v) / 60 ** i for i, v in enumerate(gps[4]))
    assert first.lat == pytest.approx(lat, abs=1e-9) and first.lon == pytest.approx(lon, abs=1e-9)
    assert float(ex.get_ifd(0x8769)[0x920A]) == pytest.approx(first.focal_mm)


def test_reader_on_a_synthetic_photo_and_clear_errors(tmp_path):
    m = ph.read_photo(write_photo(tmp_path / 'a.jpg'))
    assert (m.width, m.height, m.make, m.model) == (40, 30, 'TestMake', 'TestCam')
    assert m.lat == pytest.approx(-(33 + 52 / 60 + 12.5 / 3600)) and m.lon == pytest.approx(151 + 12 / 60 + 30 / 3600)
    assert m.alt_m == -12.5                             # GPSAltitudeRef 1: below sea level
    assert m.time_s % 60 == pytest.approx(5.25)         # seconds + SubSecTimeOriginal
    assert m.heading_deg() == -30.5                     # XMP in element form
    with pytest.raises(ph.PhotoError, match='no XMP drone-dji:FlightYawDegree'):
        m.heading_deg('flight')
    bare = tmp_path / 'bare.jpg'
    cv2.imwrite(str(bare), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ph.PhotoError, match=f'{bare}: no EXIF block'):
        ph.read_photo(bare)
    with pytest.raises(ph.PhotoError, match=r'b\.jpg: no EXIF GPSLatitude tag'):
        ph.read_photo(write_photo(tmp_path / 'b.jpg', lat=None))
    with pytest.raises(ph.PhotoError, match=r'c\.jpg: no EXIF FocalLength tag'):
        ph.read_photo(write_photo(tmp_path / 'c.jpg', focal=None))
    (tmp_path / 'text.jpg').write_text('not a jpeg')
    with pytest.raises(ph.PhotoError, match=r'text\.jpg: not a JPEG'):
        ph.read_photo(tmp_path / 'text.jpg')
    with pytest.raises(ph.PhotoError, match='not a directory'):
        ph.list_photos(tmp_path / 'nowhere')


def test_intrinsics_scaled_as_camera_info_is():
    from sensor_msgs.msg import CameraInfo

    from gplq_ros.onboard.messages import scale_camera_info
    m = ph.PhotoMeta(Path('x.jpg'), 4000, 2250, 3.61, 20.0, 0.0, 0.0, None, None)
    k = ph.intrinsics(m, sensor_width_mm=6.17)
    assert k[0, 0] == pytest.approx(3.61 / 6.17 * 4000) == k[1, 1] and (k[0, 2], k[1, 2]) == (1999.5, 1124.5)
    assert ph.intrinsics(m)[0, 0] == pytest.approx(20 / 36 * 4000)
    with pytest.raises(ph.PhotoError, match=r'x\.jpg: no EXIF FocalLengthIn35mmFilm tag: give sensor_width_mm'):
        ph.intrinsics(ph.PhotoMeta(Path('x.jpg'), 4000, 2250, 3.61, None, 0.0, 0.0, None, None))
    assert ph.output_size(m, 640) == (640, 360)
    small = ph.scale_k(k, (4000, 2250), (640, 360))
    ref = scale_camera_info(CameraInfo(width=4000, height=2250, k=k.ravel().tolist()), (2250, 4000), (360, 640))
    assert np.allclose(small.ravel(), ref.k) and (small[0, 2], small[1, 2]) == pytest.approx((319.5, 179.5))


def test_utm_forward_matches_pyproj_and_inverts_geo():
    from gplq_ros.onboard.geo import utm_to_wgs84
    pyproj = pytest.importorskip('pyproj')
    for lat, lon, zone, north in ((46.8426, -91.9946, 15, True), (-33.87, 151.21, 56, False), (64.1, -21.9, 27, True),
                                  (0.5, 2.9, 31, True)):
        e, n = geo.wgs84_to_utm(lat, lon, zone, north)
        ref = pyproj.Transformer.from_crs('EPSG:4326', f'EPSG:{(32600 if north else 32700) + zone}', always_xy=True)
        # 1 mm: the 3rd-order series is well under it inside a zone (geo.py); 1e-9 deg ~ 0.1 mm
        assert np.allclose((e, n), ref.transform(lon, lat), atol=1e-3), (lat, lon)
        assert np.allclose(utm_to_wgs84(e, n, zone, north), (lat, lon), atol=1e-9)


def test_heading_to_yaw_convention():
    """Compass heading of the image top (clockwise from north) -> yaw of the image x axis
    from east, counter-clockwise (onboard.flight): north-up image = 0, east-up = -90 deg."""
    for heading, yaw in ((0, 0), (90, -90), (-90, 90), (45, -45), (180, -180), (-130, 130)):
        assert math.degrees(ph.heading_to_yaw(heading)) == pytest.approx(yaw)


def test_photo_messages_encode_fix_pose_and_camera_info():
    from sensor_msgs.msg import NavSatFix
    from std_msgs.msg import Header

    from gplq_ros.onboard.messages import decode_pose
    from gplq_ros.onboard.messages import encode_true_pose
    from gplq_ros.onboard.photo_messages import UNMEASURED, encode_camera_info, encode_photo_fix
    hdr = Header(frame_id='cam')
    hdr.stamp.sec, hdr.stamp.nanosec = 12, 345
    fix = encode_photo_fix(46.84, -91.99, 198.3, 3.0, 6.0, hdr)
    assert (fix.latitude, fix.longitude, fix.altitude) == (46.84, -91.99, 198.3)
    assert np.allclose(np.reshape(fix.position_covariance, (3, 3)), np.diag([9.0, 9.0, 36.0]))
    assert fix.position_covariance_type == NavSatFix.COVARIANCE_TYPE_APPROXIMATED and fix.status.status == 0
    no_alt = encode_photo_fix(46.84, -91.99, None, 3.0, 6.0, hdr)
    assert math.isnan(no_alt.altitude) and no_alt.position_covariance[8] == UNMEASURED
    pose = encode_true_pose(10.0, -20.0, 40.0, math.radians(-45), Header(stamp=hdr.stamp, frame_id='map'))
    xy, cov, yaw = decode_pose(pose)          # how gplq_eval_bag reads */true_pose
    assert np.allclose(xy, (10, -20)) and cov is None and yaw == pytest.approx(math.radians(-45))
    assert pose.header.frame_id == 'map' and pose.pose.position.z == 40.0
    info = encode_camera_info(np.array([[355.5, 0, 319.5], [0, 355.5, 179.5], [0, 0, 1]]), 640, 360, hdr)
    assert (info.width, info.height, info.distortion_model, list(info.d)) == (640, 360, 'plumb_bob', [0.0] * 5)
    assert np.allclose(np.reshape(info.p, (3, 4))[:, :3], np.reshape(info.k, (3, 3))) and info.header.stamp.sec == 12
    fish = encode_camera_info(np.eye(3), 640, 360, hdr, d=(0.1, 0.0, 0.0, 0.01), distortion_model='equidistant')
    assert (fish.distortion_model, list(fish.d)) == ('equidistant', [0.1, 0.0, 0.0, 0.01])


def test_config_and_schedule(tmp_path):
    with pytest.raises(ValueError, match='utm zone'):
        ph.PhotoCameraConfig(photos='x', utm_zone='15X')
    with pytest.raises(ValueError, match='needs utm_origin_e and utm_origin_n'):
        ph.PhotoCameraConfig(photos='x', utm_zone='15N')          # a zone needs its origin
    with pytest.raises(ValueError, match=r'utm_origin_n=-1.0: must be in'):
        ph.PhotoCameraConfig(photos='x', utm_zone='15N', utm_origin_e=5e5, utm_origin_n=-1.0)
    with pytest.raises(ValueError, match='yaw_source'):
        ph.PhotoCameraConfig(photos='x', yaw_source='compass')
    # a ROS double array (a list or array) becomes a tuple
    assert ph.PhotoCameraConfig(photos='x', distortion=[0.1, 0, 0, 0, 0]).distortion == (0.1, 0.0, 0.0, 0.0, 0.0)
    fish = ph.PhotoCameraConfig(photos='x', distortion_model='equidistant', distortion=[0.0] * 4)
    assert fish.distortion == (0.0,) * 4
    with pytest.raises(ValueError, match=r'distortion=\[0.0, 0.0, 0.0, 0.0, 0.0\]: equidistant takes 4 finite values'):
        ph.PhotoCameraConfig(photos='x', distortion_model='equidistant')
    with pytest.raises(ValueError, match='distortion_model'):
        ph.PhotoCameraConfig(photos='x', distortion_model='fisheye')
    d = tmp_path / 'p'
    d.mkdir()
    for i, (t, sub) in enumerate((('2020:01:02 03:04:05', '0'), ('2020:01:02 03:04:07', '5'),
                                  ('2020:01:02 03:04:06', '0'))):
        write_photo(d / f'img_{i}.jpg', time_text=t, subsec=sub)
    seq = ph.PhotoSequence(ph.PhotoCameraConfig(photos=str(d), time_scale=2.0))
    assert [m.path.name for m in seq.metas] == ['img_0.jpg', 'img_2.jpg', 'img_1.jpg']    # capture order
    assert seq.offsets == pytest.approx([0.0, 0.5, 1.25]) and seq.period == pytest.approx(1.25 + 0.625)
    assert seq.due(4) == pytest.approx(seq.period + 0.5)
    assert seq.pose(seq.metas[0]) is None                              # no georeference
    assert seq.frame(0).rgb.shape == (480, 640, 3)                     # 40x30 up to 640 wide
    fixed = ph.PhotoSequence(ph.PhotoCameraConfig(photos=str(d), rate_hz=4.0))
    assert [m.path.name for m in fixed.metas] == ['img_0.jpg', 'img_1.jpg', 'img_2.jpg'] and fixed.due(3) == 0.75
    write_photo(d / 'img_3.jpg', time_text=None)
    with pytest.raises(ph.PhotoError, match=r'img_3\.jpg: no EXIF DateTimeOriginal tag: set rate_hz > 0'):
        ph.PhotoSequence(ph.PhotoCameraConfig(photos=str(d)))
    with pytest.raises(ph.PhotoError, match=r'no XMP drone-dji:FlightYawDegree'):
        ph.PhotoSequence(ph.PhotoCameraConfig(photos=str(d), rate_hz=1.0, utm_zone='56S', utm_origin_e=300000.0,
                                              utm_origin_n=6200000.0, yaw_source='flight'))


def _content_shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixel shift of the image centre's content from photo a to photo b (ORB + RANSAC)."""
    orb = cv2.ORB_create(2000)
    ka, da = orb.detectAndCompute(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), None)
    kb, db = orb.detectAndCompute(cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)
    m = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(da, db)
    pa = np.float32([ka[x.queryIdx].pt for x in m])
    pb = np.float32([kb[x.trainIdx].pt for x in m])
    h, inliers = cv2.estimateAffinePartial2D(pa, pb, method=cv2.RANSAC, ransacReprojThreshold=3)
    assert h is not None and inliers.sum() >= 15
    c = np.array([(a.shape[1] - 1) / 2, (a.shape[0] - 1) / 2])
    return h[:, :2] @ c + h[:, 2] - c


@needs_brighton
def test_yaw_and_intrinsics_agree_with_the_image_motion():
    """The reference pose's convention checked on the pictures: between two overlapping
    photos the ground content moves by -(camera displacement) expressed in the image axes
    (u = (cos yaw, sin yaw), v down = (sin yaw, -cos yaw) in map), times fx / height. A
    wrong sign or a 90-degree offset of the yaw conversion points the prediction elsewhere.
    (On this survey's return leg, DJI_0024..0029, the XMP headings are 180 deg off the
    pictures, which keep the outbound leg's orientation: tags are what the node publishes.)"""
    seq = ph.PhotoSequence(ph.PhotoCameraConfig(photos=str(PHOTOS), rate_hz=1.0, sensor_width_mm=6.17,
                                                utm_zone=ZONE, utm_origin_e=ORIGIN[0], utm_origin_n=ORIGIN[1]))
    for i in (0, 13):
        x0, y0, z0, yaw = seq.pose(seq.metas[i])
        x1, y1, _, _ = seq.pose(seq.metas[i + 1])
        d = np.array([x1 - x0, y1 - y0])
        u, v = np.array([math.cos(yaw), math.sin(yaw)]), np.array([math.sin(yaw), -math.cos(yaw)])
        expected = -np.array([d @ u, d @ v]) * seq.k[0, 0] / z0
        got = _content_shift(seq.frame(i).rgb, seq.frame(i + 1).rgb)
        angle = math.degrees(math.atan2(expected[0] * got[1] - expected[1] * got[0], expected @ got))
        assert abs(angle) < 15 and 0.8 < np.linalg.norm(got) / np.linalg.norm(expected) < 1.25, (i, got, expected)


@needs_brighton
def test_photo_camera_node_publishes_one_stamp_per_photo():
    """The node in-process with real rclpy: image (rgb8, 640x360), camera_info, ~/fix and
    ~/true_pose of each photo carry the same stamp; fix and pose agree with the photo tags."""
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from helpers.ros import qos, spin_until
    from sensor_msgs.msg import CameraInfo, Image, NavSatFix

    from gplq_ros.nodes.photo_camera_node import PhotoCameraNode
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = sub = None
    try:
        params = {'photos': str(PHOTOS), 'rate_hz': 20.0, 'max_frames': 3, 'utm_zone': ZONE,
                  'utm_origin_e': ORIGIN[0], 'utm_origin_n': ORIGIN[1], 'qos_reliability': 'reliable',
                  'qos_depth': 10, 'distortion': [-0.1, 0.02, 0.0, 0.0, 0.0]}
        sub = rclpy.create_node('photo_test_sub', context=ctx)
        got = {k: [] for k in ('image', 'info', 'fix', 'pose')}
        for key, typ, topic in (('image', Image, '/image'), ('info', CameraInfo, '/camera_info'),
                                ('fix', NavSatFix, '/photo_camera_node/fix'),
                                ('pose', PoseStamped, '/photo_camera_node/true_pose')):
            sub.create_subscription(typ, topic, got[key].append, qos(True))
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(sub)
        spin_until(ex, 3.0, lambda: sub.count_publishers('/image') > 0)     # discovery before the first frame
        node = PhotoCameraNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        ex.add_node(node)
        spin_until(ex, 10.0, lambda: min(len(v) for v in got.values()) >= 3)
    finally:
        for n in (node, sub):
            if n is not None:
                n.destroy_node()
        rclpy.shutdown(context=ctx)
    assert [len(v) for v in got.values()] == [3, 3, 3, 3], {k: len(v) for k, v in got.items()}

    def stamps(msgs):
        return [(m.header.stamp.sec, m.header.stamp.nanosec) for m in msgs]
    assert stamps(got['image']) == stamps(got['info']) == stamps(got['fix']) == stamps(got['pose'])
    assert len(set(stamps(got['image']))) == 3
    img, info = got['image'][0], got['info'][0]
    assert (img.encoding, img.width, img.height, img.header.frame_id) == ('rgb8', 640, 360, 'camera_optical_frame')
    assert (info.width, info.height) == (640, 360) and info.k[0] == pytest.approx(20 / 36 * 640)
    assert (info.distortion_model, list(info.d)) == ('plumb_bob', [-0.1, 0.02, 0.0, 0.0, 0.0])   # the user's D
    metas = [ph.read_photo(p) for p in ph.list_photos(PHOTOS)][:3]
    georef = ph.PhotoCameraConfig(photos='x', utm_zone=ZONE, utm_origin_e=ORIGIN[0], utm_origin_n=ORIGIN[1]).georef
    for m, fix, pose in zip(metas, got['fix'], got['pose']):
        assert (fix.latitude, fix.longitude, fix.altitude) == (m.lat, m.lon, m.alt_m)
        assert np.allclose((pose.pose.position.x, pose.pose.position.y), ph.map_xy(georef, m.lat, m.lon))
        assert pose.header.frame_id == 'map' and pose.pose.position.z == m.relative_alt_m
    assert abs(got['pose'][0].pose.orientation.z) == pytest.approx(math.sin(math.radians(45) / 2))


def test_node_parameters_match_config_file(tmp_path):
    """Every declared parameter has a description and is in config/photo_camera_node.yaml
    with its default (the file documents the node), on synthetic photos."""
    import rclpy
    import yaml
    from rclpy.parameter import Parameter

    from gplq_ros.nodes.photo_camera_node import PhotoCameraNode
    write_photo(tmp_path / 'a.jpg')
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = PhotoCameraNode(context=ctx, parameter_overrides=[Parameter('photos', value=str(tmp_path))])
        try:
            declared = set(node._parameters) - {'use_sim_time', 'start_type_description_service'}
            doc = yaml.safe_load((REPO / 'config' / 'photo_camera_node.yaml').read_text())
            documented = doc['/**/photo_camera_node']['ros__parameters']
            assert declared == set(documented)
            for name in declared:
                assert node.describe_parameter(name).description, name
                if name != 'photos':
                    assert node.get_parameter(name).value == documented[name], name
            assert node.pub_pose is None          # no georeference: no ~/true_pose publisher
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_photo_camera_node_waits_for_the_node_it_is_told_to(tmp_path):
    """wait_for_node: no photo is published (none lost) until that node subscribes to image; another
    subscriber does not start it; then every photo is published, the first at once."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from helpers.ros import qos, spin_until
    from sensor_msgs.msg import Image

    from gplq_ros.nodes.photo_camera_node import PhotoCameraNode
    for i in range(3):
        write_photo(tmp_path / f'p{i}.jpg', subsec=str(10 + i))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    nodes = []
    try:
        node = PhotoCameraNode(context=ctx, parameter_overrides=[
            Parameter('photos', value=str(tmp_path)), Parameter('rate_hz', value=20.0),
            Parameter('wait_for_node', value='feature_node'), Parameter('qos_reliability', value='reliable')])
        other = rclpy.create_node('viewer', context=ctx)
        nodes += [node, other]
        seen = []
        other.create_subscription(Image, '/image', seen.append, qos(True))
        ex = SingleThreadedExecutor(context=ctx)
        for n in nodes:
            ex.add_node(n)
        spin_until(ex, 1.5)
        assert seen == [] and node.sent == 0 and node.waiting
        feat = rclpy.create_node('feature_node', context=ctx)
        nodes.append(feat)
        got = []
        feat.create_subscription(Image, '/image', got.append, qos(True))
        ex.add_node(feat)
        spin_until(ex, 10.0, lambda: len(got) >= 3)
        assert len(got) == 3 and not node.waiting and node.published == 3
    finally:
        for n in nodes:
            n.destroy_node()
        rclpy.shutdown(context=ctx)
