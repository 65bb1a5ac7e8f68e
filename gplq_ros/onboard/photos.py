"""Geotagged photos as a camera (numpy and OpenCV only): EXIF/XMP reader, intrinsics,
published image, GNSS position and the reference pose in ``map`` (photo_camera_node).

**Reading.** The JPEG header is parsed here (no EXIF library: Pillow is not an onboard
dependency): the image size from the SOF marker, EXIF from the APP1 ``Exif`` segment
(TIFF IFD0 Make/Model/Orientation/DateTime, the Exif IFD DateTimeOriginal,
SubSecTimeOriginal, FocalLength, FocalLengthIn35mmFilm, the GPS IFD latitude, longitude,
altitude) and DJI's XMP (``drone-dji:RelativeAltitude``, ``GimbalPitchDegree``,
``GimbalYawDegree``, ``FlightYawDegree``: plain XML text in the APP1 XMP segment, read as
attributes or elements). A missing required tag raises ``PhotoError`` naming the file and
the tag. Pixels are decoded as stored (the EXIF Orientation tag is ignored: drone cameras
write 1, and the DJI angles refer to the sensor as stored).

**Intrinsics** (pinhole, square pixels, principal point at the image centre; a photo
carries no distortion calibration: the user may give one, ``distortion_model`` and
``distortion``, published in CameraInfo for feature_node to undistort): ``fx = FocalLength / sensor_width_mm * W``
when ``sensor_width_mm`` is given (e.g. 6.17 for the 1/2.3" sensor of DJI's FC300
cameras), otherwise from the 35 mm equivalent, ``fx = FocalLengthIn35mmFilm / 36 * W``
(the width-based convention of OpenSfM; about 5 % short for a 16:9 crop of a 4:3 sensor,
e.g. the Phantom 3's 4000x2250 photos: 2222 px vs 2341 px with 6.17 mm). No sensor table.
The published image is resized to ``width`` (height keeps the aspect ratio) and K is
scaled about pixel centres as ``messages.scale_camera_info`` does (``c' = (c + 0.5) s - 0.5``).

**Yaw** (this project's convention, ``onboard.flight``: yaw of the image's x axis, u
right, from east, counter-clockwise): DJI's GimbalYawDegree / FlightYawDegree is a compass
heading psi (0 = north, clockwise, degrees) of the camera's forward axis; pitched down to
nadir (GimbalPitchDegree -90), the top of the image (-v) points along psi, so the image's
right (+u) points at compass psi + 90, i.e. at ``90 - (psi + 90) = -psi`` degrees from east
counter-clockwise: ``yaw = -radians(psi)`` (wrapped to [-pi, pi)). Gimbal yaw is the
camera's own heading (used by default), flight yaw the airframe's.

**Reference pose** in ``map`` (x east, y north, metres from the orthophoto's top-left
corner, ``onboard.geo``): the photo's GNSS latitude/longitude projected to UTM in the map's
zone, minus the map origin; z = RelativeAltitude (height above the take-off point, not
above the ground below) or 0 when absent.
"""
import math
import re
import statistics
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from gplq_ros.onboard.geo import GeoRef, parse_zone, wgs84_to_utm
from gplq_ros.onboard.messages import scale_intrinsics
from gplq_ros.onboard.settings import setting, validate

PHOTO_SUFFIXES = ('.jpg', '.jpeg')
YAW_SOURCES = ('gimbal', 'flight')
DISTORTION_LENGTHS = {'plumb_bob': 5, 'rational_polynomial': 8, 'equidistant': 4}   # D values per model
DJI_XMP = ('RelativeAltitude', 'AbsoluteAltitude', 'GimbalPitchDegree', 'GimbalYawDegree', 'GimbalRollDegree',
           'FlightYawDegree', 'FlightPitchDegree', 'FlightRollDegree')


class PhotoError(ValueError):
    """A photo that cannot be used; the message names the file and the tag."""


@dataclass(frozen=True)
class PhotoCameraConfig:
    photos: str = setting('', 'directory of geotagged JPEG photos (*.jpg/*.jpeg), played in capture-time order')
    rate_hz: float = setting(0.0, 'frames per second; 0 = at the photos\' capture times (DateTimeOriginal '
                             '+ SubSecTimeOriginal) scaled by time_scale', range=(0.0, 120.0))
    time_scale: float = setting(1.0, 'playback speed with rate_hz 0 (10 = ten times faster than captured)',
                                range=(0.001, 10000.0))
    width: int = setting(640, 'published image width, pixels (height keeps the aspect ratio; CameraInfo scaled)',
                         range=(16, 8192))
    sensor_width_mm: float = setting(0.0, 'sensor width, mm, for fx = FocalLength / sensor_width_mm * width '
                                     '(6.17 for DJI FC300 1/2.3"); 0 = from EXIF FocalLengthIn35mmFilm / 36 mm',
                                     range=(0.0, 100.0))
    yaw_source: str = setting('gimbal', 'heading of ~/true_pose: DJI XMP GimbalYawDegree (the camera) or '
                              'FlightYawDegree (the airframe)', choices=YAW_SOURCES)
    frame_id: str = setting('camera_optical_frame', 'frame_id of image, camera_info and ~/fix')
    map_frame: str = setting('map', 'frame_id of ~/true_pose')
    utm_zone: str = setting('', 'UTM zone of the map frame, e.g. 12N (as gplq_map --utm-zone); '
                            '"" = no georeference, no ~/true_pose')
    utm_origin_e: float = setting(0.0, 'UTM easting of the map origin (orthophoto top-left corner), m',
                                  range=(0.0, 1_000_000.0))
    utm_origin_n: float = setting(0.0, 'UTM northing of the map origin, m', range=(0.0, 10_000_000.0))
    gnss_sigma_m: float = setting(3.0, 'horizontal 1-sigma of the photos\' GNSS (consumer receiver: 2-5 m), '
                                  'for the ~/fix covariance', range=(0.01, 1000.0))
    gnss_vertical_sigma_m: float = setting(6.0, 'vertical 1-sigma of the photos\' GNSS altitude, m',
                                           range=(0.01, 1000.0))
    loop: bool = setting(False, 'start over after the last photo')
    max_frames: int = setting(0, 'stop publishing after this many frames (0: never)', range=(0, 10 ** 9))
    wait_for_node: str = setting('', 'start playing once the node of this name (in this namespace) subscribes to '
                                 'image, e.g. feature_node (the bringup sets it: no photo is lost while it loads its '
                                 'model); "" = at once')
    distortion_model: str = setting('plumb_bob', 'lens distortion model published in camera_info',
                                    choices=tuple(DISTORTION_LENGTHS))
    distortion: Tuple[float, ...] = setting(
        help='lens distortion D published in camera_info (a photo carries none: e.g. from a camera calibration at '
        'any resolution): plumb_bob k1, k2, t1, t2, k3; rational_polynomial 8 values; equidistant k1..k4; '
        'all zero = none', default_factory=lambda: [0.0] * 5)

    def __post_init__(self):
        validate(self)
        d = tuple(float(v) for v in self.distortion)     # a ROS double array arrives as a list or array
        object.__setattr__(self, 'distortion', d)
        want = DISTORTION_LENGTHS[self.distortion_model]
        if len(d) != want or not all(math.isfinite(v) for v in d):
            raise ValueError(f'PhotoCameraConfig.distortion={list(d)}: {self.distortion_model} takes {want} '
                             'finite values')
        if self.utm_zone:
            parse_zone(self.utm_zone)
            if self.utm_origin_e == 0:
                raise ValueError(f'PhotoCameraConfig.utm_zone={self.utm_zone!r} needs utm_origin_e and utm_origin_n '
                                 '(UTM of the map origin, as gplq_map --utm-origin E N)')
            self.georef   # noqa: B018  (GeoRef checks the origin)

    @property
    def georef(self) -> Optional[GeoRef]:
        if not self.utm_zone:
            return None
        zone, north = parse_zone(self.utm_zone)
        return GeoRef(zone, north, float(self.utm_origin_e), float(self.utm_origin_n))


@dataclass(frozen=True)
class PhotoMeta:
    path: Path
    width: int                          # stored pixels (JPEG SOF)
    height: int
    focal_mm: float                     # EXIF FocalLength
    focal_35mm: Optional[float]         # EXIF FocalLengthIn35mmFilm
    lat: float                          # degrees, north positive
    lon: float                          # degrees, east positive
    alt_m: Optional[float]              # EXIF GPSAltitude (usually above mean sea level, not the ellipsoid)
    time_s: Optional[float]             # DateTimeOriginal (+ SubSecTimeOriginal) as seconds, the clock read as UTC
    make: str = ''
    model: str = ''
    orientation: int = 1
    xmp: Tuple[Tuple[str, float], ...] = ()     # DJI drone-dji values present

    def dji(self, name: str) -> Optional[float]:
        return dict(self.xmp).get(name)

    @property
    def relative_alt_m(self) -> Optional[float]:
        return self.dji('RelativeAltitude')

    @property
    def gimbal_pitch_deg(self) -> Optional[float]:
        return self.dji('GimbalPitchDegree')

    def heading_deg(self, source: str = 'gimbal') -> float:
        """Compass heading of the camera (0 north, clockwise), from DJI XMP."""
        tag = {'gimbal': 'GimbalYawDegree', 'flight': 'FlightYawDegree'}[source]
        v = self.dji(tag)
        if v is None:
            raise PhotoError(f'{self.path}: no XMP drone-dji:{tag} (needed for the yaw of ~/true_pose; '
                             f'yaw_source={source!r})')
        return v

    def yaw(self, source: str = 'gimbal') -> float:
        """Yaw in this project's convention (image x axis from east, counter-clockwise), rad."""
        return heading_to_yaw(self.heading_deg(source))


def heading_to_yaw(heading_deg: float) -> float:
    """DJI compass heading of a nadir camera's image top (deg, clockwise from north) -> yaw of
    the image's x axis from east, counter-clockwise (rad, in [-pi, pi))."""
    return (-math.radians(heading_deg) + math.pi) % (2 * math.pi) - math.pi


# --- JPEG / TIFF parsing -----------------------------------------------------------------

_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_XMP_ID = b'http://ns.adobe.com/xap/1.0/\x00'
EXIF_IFD, GPS_IFD = 0x8769, 0x8825


def jpeg_segments(path: Path) -> Tuple[Tuple[int, int], List[bytes], List[bytes]]:
    """((width, height) from SOF, APP1 Exif payloads (TIFF), APP1 XMP payloads) of a JPEG."""
    with open(path, 'rb') as f:
        if f.read(2) != b'\xff\xd8':
            raise PhotoError(f'{path}: not a JPEG file (no SOI marker)')
        exif, xmp, size = [], [], None
        while True:
            b = f.read(1)
            if not b:
                break
            if b != b'\xff':
                raise PhotoError(f'{path}: corrupt JPEG header (no marker at byte {f.tell() - 1})')
            m = f.read(1)
            while m == b'\xff':     # fill bytes
                m = f.read(1)
            if not m:
                break
            marker = m[0]
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:     # no length
                continue
            if marker in (0xD9, 0xDA):    # end of image, start of scan: the header is over
                break
            raw = f.read(2)
            if len(raw) < 2:
                break
            data = f.read(struct.unpack('>H', raw)[0] - 2)
            if marker == 0xE1 and data.startswith(b'Exif\x00\x00'):
                exif.append(data[6:])
            elif marker == 0xE1 and data.startswith(_XMP_ID):
                xmp.append(data[len(_XMP_ID):])
            elif marker in _SOF and len(data) >= 5 and size is None:
                h, w = struct.unpack('>HH', data[1:5])
                size = (w, h)
    if size is None:
        raise PhotoError(f'{path}: corrupt JPEG (no SOF marker: image size unknown)')
    return size, exif, xmp


def parse_tiff(tiff: bytes) -> Dict[str, Dict[int, object]]:
    """{'ifd0': {tag: value}, 'exif': {...}, 'gps': {...}} of an EXIF TIFF block; values:
    str (ASCII), tuple of numbers (rationals as floats), or bytes (UNDEFINED)."""
    if tiff[:2] == b'II':
        bo = '<'
    elif tiff[:2] == b'MM':
        bo = '>'
    else:
        raise ValueError('not a TIFF header')

    def ifd(offset: int) -> Dict[int, object]:
        out = {}
        if offset <= 0 or offset + 2 > len(tiff):
            return out
        count = struct.unpack(bo + 'H', tiff[offset:offset + 2])[0]
        for i in range(count):
            e = offset + 2 + 12 * i
            if e + 12 > len(tiff):
                break
            tag, typ, n = struct.unpack(bo + 'HHI', tiff[e:e + 8])
            size = _TYPE_SIZE.get(typ)
            if size is None:
                continue
            total = size * n
            if total <= 4:
                raw = tiff[e + 8:e + 8 + total]
            else:
                off = struct.unpack(bo + 'I', tiff[e + 8:e + 12])[0]
                if off + total > len(tiff):
                    continue
                raw = tiff[off:off + total]
            out[tag] = _value(bo, typ, n, raw)
        return out
    root = ifd(struct.unpack(bo + 'I', tiff[4:8])[0])
    res = {'ifd0': root, 'exif': {}, 'gps': {}}
    for key, tag in (('exif', EXIF_IFD), ('gps', GPS_IFD)):
        if isinstance(root.get(tag), tuple) and root[tag]:
            res[key] = ifd(int(root[tag][0]))
    return res


def _value(bo: str, typ: int, n: int, raw: bytes):
    if typ == 2:
        return raw.split(b'\x00', 1)[0].decode('latin-1').strip()
    if typ == 7:
        return bytes(raw)
    fmt = {1: 'B', 3: 'H', 4: 'I', 6: 'b', 8: 'h', 9: 'i', 11: 'f', 12: 'd'}
    if typ in (5, 10):
        vals = struct.unpack(bo + ('I' if typ == 5 else 'i') * (2 * n), raw)
        return tuple(a / b if b else float('nan') for a, b in zip(vals[::2], vals[1::2]))
    return struct.unpack(bo + fmt[typ] * n, raw)


def parse_dji_xmp(text: str) -> Dict[str, float]:
    """The numeric ``drone-dji:`` values of an XMP packet (attribute or element form)."""
    out = {}
    for name, val in re.findall(r'drone-dji:(\w+)\s*=\s*"([^"]*)"', text) + \
            re.findall(r'<drone-dji:(\w+)>([^<]*)</drone-dji:\1>', text):
        try:
            out[name] = float(val.strip())
        except ValueError:
            continue
    return out


def _dms(path: Path, gps: dict, tag: int, ref_tag: int, name: str, neg: str) -> float:
    v = gps.get(tag)
    if not isinstance(v, tuple) or not 1 <= len(v) <= 3 or not all(math.isfinite(x) for x in v):
        raise PhotoError(f'{path}: no EXIF {name} tag (a geotagged photo is needed)')
    deg = sum(x / 60 ** i for i, x in enumerate(v))
    ref = gps.get(ref_tag, '')
    return -deg if isinstance(ref, str) and ref.upper().startswith(neg) else deg


def _capture_time(exif: dict, ifd0: dict) -> Optional[float]:
    text = exif.get(0x9003) or ifd0.get(0x0132)     # DateTimeOriginal, else DateTime
    if not isinstance(text, str):
        return None
    try:
        t = datetime.strptime(text.strip()[:19], '%Y:%m:%d %H:%M:%S').replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None
    sub = exif.get(0x9291) if exif.get(0x9003) else None      # SubSecTimeOriginal
    if isinstance(sub, str) and sub.strip().isdigit():
        t += float('0.' + sub.strip())
    return t


def read_photo(path) -> PhotoMeta:
    """The metadata of one photo (header only: pixels are not decoded)."""
    path = Path(path)
    try:
        (w, h), exifs, xmps = jpeg_segments(path)
    except OSError as e:
        raise PhotoError(f'{path}: cannot read ({e.strerror or e})') from None
    if not exifs:
        raise PhotoError(f'{path}: no EXIF block (APP1 Exif): not a camera photo with metadata')
    try:
        tags = parse_tiff(exifs[0])
    except (ValueError, struct.error) as e:
        raise PhotoError(f'{path}: unreadable EXIF block ({e})') from None
    ifd0, exif, gps = tags['ifd0'], tags['exif'], tags['gps']
    focal = exif.get(0x920A)
    if not isinstance(focal, tuple) or not focal or not focal[0] > 0:
        raise PhotoError(f'{path}: no EXIF FocalLength tag (needed for the camera intrinsics)')
    f35 = exif.get(0xA405)
    f35 = float(f35[0]) if isinstance(f35, tuple) and f35 and f35[0] > 0 else None
    lat = _dms(path, gps, 2, 1, 'GPSLatitude', 'S')
    lon = _dms(path, gps, 4, 3, 'GPSLongitude', 'W')
    alt = gps.get(6)
    alt = float(alt[0]) if isinstance(alt, tuple) and alt and math.isfinite(alt[0]) else None
    ref = gps.get(5)
    if alt is not None and isinstance(ref, (bytes, tuple)) and len(ref) and ref[0] == 1:
        alt = -alt      # GPSAltitudeRef 1: below sea level
    xmp = {}
    for packet in xmps:
        xmp.update(parse_dji_xmp(packet.decode('utf-8', 'replace')))
    orient = ifd0.get(0x0112)
    return PhotoMeta(path=path, width=int(w), height=int(h), focal_mm=float(focal[0]), focal_35mm=f35,
                     lat=lat, lon=lon, alt_m=alt, time_s=_capture_time(exif, ifd0),
                     make=str(ifd0.get(0x010F, '')), model=str(ifd0.get(0x0110, '')),
                     orientation=int(orient[0]) if isinstance(orient, tuple) and orient else 1,
                     xmp=tuple(sorted((k, v) for k, v in xmp.items() if k in DJI_XMP)))


def list_photos(directory) -> List[Path]:
    d = Path(directory)
    if not str(directory):
        raise PhotoError('photos: no directory given')
    if not d.is_dir():
        raise PhotoError(f'photos={str(d)!r}: not a directory')
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    if not files:
        raise PhotoError(f'photos={str(d)!r}: no *.jpg / *.jpeg photos in it')
    return files


# --- camera model and image --------------------------------------------------------------

def intrinsics(meta: PhotoMeta, sensor_width_mm: float = 0.0) -> np.ndarray:
    """3x3 K of the photo at its stored size (see the module docstring)."""
    if sensor_width_mm > 0:
        fx = meta.focal_mm / sensor_width_mm * meta.width
    elif meta.focal_35mm:
        fx = meta.focal_35mm / 36.0 * meta.width
    else:
        raise PhotoError(f'{meta.path}: no EXIF FocalLengthIn35mmFilm tag: give sensor_width_mm '
                         f'(FocalLength is {meta.focal_mm:g} mm)')
    return np.array([[fx, 0.0, (meta.width - 1) / 2], [0.0, fx, (meta.height - 1) / 2], [0.0, 0.0, 1.0]])


def output_size(meta: PhotoMeta, width: int) -> Tuple[int, int]:
    """(width, height) of the published image: ``width`` wide, the photo's aspect ratio."""
    return int(width), max(1, int(round(meta.height * width / meta.width)))


def scale_k(k: np.ndarray, src_wh: Tuple[int, int], dst_wh: Tuple[int, int]) -> np.ndarray:
    """K for the image resized from ``src_wh`` to ``dst_wh`` (about pixel centres)."""
    return scale_intrinsics(k, dst_wh[0] / src_wh[0], dst_wh[1] / src_wh[1])


def load_image(meta: PhotoMeta, width: int) -> np.ndarray:
    """The photo as uint8 RGB at ``output_size(meta, width)``; decoded at 1/2, 1/4 or 1/8
    by the JPEG decoder when that divides the size exactly and stays above ``width``."""
    w, h = output_size(meta, width)
    flags = cv2.IMREAD_COLOR
    for f, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                    (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if meta.width % f == 0 and meta.height % f == 0 and meta.width // f >= w:
            flags = flag
            break
    bgr = cv2.imread(str(meta.path), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise PhotoError(f'{meta.path}: JPEG data not decodable')
    if bgr.shape[1] != w or bgr.shape[0] != h:
        interp = cv2.INTER_AREA if bgr.shape[1] > w else cv2.INTER_LINEAR
        bgr = cv2.resize(bgr, (w, h), interpolation=interp)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --- the camera a place map of the flight assumes (gplq_map --photos) ---------------------

HEIGHT_STEP = 1.1      # map heights at most this ratio apart: the boundary matcher's coarse height step
#                        (onboard.localize.BoundaryMatcher searches heights 1.1x apart)


def map_heights(alts) -> List[float]:
    """Map heights (m, 0.1 m) for a flight flown at heights ``alts`` (e.g. the photos'
    RelativeAltitude): the median when the range is within a factor ``HEIGHT_STEP``, else
    heights from the lowest to the highest, equal ratios apart, at most ``HEIGHT_STEP``."""
    alts = [float(a) for a in alts]
    if not alts or min(alts) <= 0:
        raise PhotoError(f'flight heights {alts}: need at least one, all > 0 m')
    lo, hi = min(alts), max(alts)
    if hi / lo <= HEIGHT_STEP:
        return [round(float(np.median(alts)), 1)]
    n = int(math.ceil(math.log(hi / lo) / math.log(HEIGHT_STEP)))
    return [round(lo * (hi / lo) ** (i / n), 1) for i in range(n + 1)]


@dataclass(frozen=True)
class MapCamera:
    """What a place map of a flight's photos assumes: the image photo_camera_node publishes
    (``width`` wide, the photos' aspect ratio; HFOV from the EXIF intrinsics, ``intrinsics``)
    and the heights from the photos' RelativeAltitude (``map_heights``; ``heights_m`` is ()
    when no photo has one)."""
    width: int
    height: int
    hfov_deg: float                               # 3 decimals
    heights_m: Tuple[float, ...]
    altitude_range_m: Optional[Tuple[float, float]]
    n_photos: int
    n_altitudes: int                              # photos with RelativeAltitude
    first: PhotoMeta                              # the earliest photo: its size and focal length

    def describe(self) -> str:
        m = self.first
        focal = (f'FocalLengthIn35mmFilm {m.focal_35mm:g} mm' if m.focal_35mm else f'FocalLength {m.focal_mm:g} mm')
        rng = (f'RelativeAltitude {self.altitude_range_m[0]:.1f}..{self.altitude_range_m[1]:.1f} m in '
               f'{self.n_altitudes} of {self.n_photos} photos' if self.altitude_range_m else
               f'no RelativeAltitude in the {self.n_photos} photos')
        return (f'camera {self.width}x{self.height} px, HFOV {self.hfov_deg:.2f} deg ({m.width}x{m.height} photos, '
                f'EXIF {focal}); {rng}')


def map_camera(metas, width: int = 640, sensor_width_mm: float = 0.0) -> MapCamera:
    """The ``MapCamera`` of the photos ``metas`` (``PhotoMeta``; the earliest by capture
    time gives the size and intrinsics, as ``PhotoSequence`` does); ``width``: the published
    width (photo_camera_node's ``width``, 640 by default)."""
    metas = sorted(metas, key=lambda m: (m.time_s is None, m.time_s or 0.0, m.path.name))
    if not metas:
        raise PhotoError('photos: none given')
    first = metas[0]
    for m in metas[1:]:
        if (m.width, m.height) != (first.width, first.height):
            raise PhotoError(f'{m.path}: {m.width}x{m.height} px, but {first.path.name} is '
                             f'{first.width}x{first.height}: one camera per flight')
    size = output_size(first, width)
    k = scale_k(intrinsics(first, sensor_width_mm), (first.width, first.height), size)
    hfov = math.degrees(2 * math.atan(size[0] / 2 / k[0, 0]))
    alts = [m.relative_alt_m for m in metas if m.relative_alt_m is not None]
    return MapCamera(size[0], size[1], round(hfov, 3), tuple(map_heights(alts)) if alts else (),
                     (min(alts), max(alts)) if alts else None, len(metas), len(alts), first)


# --- georeference ------------------------------------------------------------------------

def map_xy(georef: GeoRef, lat: float, lon: float) -> Tuple[float, float]:
    """(x east, y north) metres in the map frame of ``georef`` of a latitude/longitude."""
    e, n = wgs84_to_utm(lat, lon, georef.zone, georef.north)
    return e - georef.origin_e, n - georef.origin_n


# --- the sequence ------------------------------------------------------------------------

@dataclass(frozen=True)
class PhotoFrame:
    index: int
    meta: PhotoMeta
    rgb: np.ndarray


class PhotoSequence:
    """The photos of ``cfg.photos`` in capture-time order (file name for equal or missing
    times), their schedule, camera model and reference poses."""

    def __init__(self, cfg: PhotoCameraConfig):
        self.cfg = cfg
        metas = [read_photo(p) for p in list_photos(cfg.photos)]
        if cfg.rate_hz == 0:
            missing = [m for m in metas if m.time_s is None]
            if missing:
                raise PhotoError(f'{missing[0].path}: no EXIF DateTimeOriginal tag: set rate_hz > 0 to play '
                                 'photos without capture times')
            metas.sort(key=lambda m: (m.time_s, m.path.name))
        self.metas = metas
        first = metas[0]
        for m in metas[1:]:
            if (m.width, m.height) != (first.width, first.height):
                raise PhotoError(f'{m.path}: {m.width}x{m.height} px, but {first.path.name} is '
                                 f'{first.width}x{first.height}: one camera per sequence')
        self.k_full = intrinsics(first, cfg.sensor_width_mm)
        self.size = output_size(first, cfg.width)
        self.k = scale_k(self.k_full, (first.width, first.height), self.size)
        self.georef = cfg.georef
        if self.georef is not None:
            for m in metas:
                m.heading_deg(cfg.yaw_source)   # every photo has the yaw (PhotoError names the first without)
        if cfg.rate_hz > 0:
            self.offsets = [i / cfg.rate_hz for i in range(len(metas))]
            step = 1.0 / cfg.rate_hz
        else:
            self.offsets = [(m.time_s - metas[0].time_s) / cfg.time_scale for m in metas]
            gaps = [b - a for a, b in zip(self.offsets, self.offsets[1:])]
            step = statistics.median(gaps) if gaps and statistics.median(gaps) > 0 else 1.0 / cfg.time_scale
        self.period = self.offsets[-1] + step      # one pass, for looping

    def __len__(self) -> int:
        return len(self.metas)

    def due(self, n: int) -> float:
        """Seconds after the start at which the n-th frame (0-based, loops counted) is due."""
        return (n // len(self)) * self.period + self.offsets[n % len(self)]

    def frame(self, index: int) -> PhotoFrame:
        m = self.metas[index]
        return PhotoFrame(index, m, load_image(m, self.cfg.width))

    def pose(self, meta: PhotoMeta) -> Optional[Tuple[float, float, float, float]]:
        """(x, y, z, yaw) in ``map`` (None without a georeference)."""
        if self.georef is None:
            return None
        x, y = map_xy(self.georef, meta.lat, meta.lon)
        z = meta.relative_alt_m if meta.relative_alt_m is not None else 0.0
        return x, y, z, meta.yaw(self.cfg.yaw_source)
