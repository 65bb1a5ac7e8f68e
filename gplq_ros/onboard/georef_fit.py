"""Geo-reference an orthophoto that has none from the geotagged photos it was made of
(numpy + OpenCV; photo tags from ``onboard.photos``).

1. **Registration**: each photo, downscaled to about the orthophoto's scale, is matched
   to the orthophoto (SIFT, Lowe's ratio test, RANSAC similarity or homography); the
   photo's image centre (the ground point under a nadir camera) is mapped into the
   orthophoto. The scale (orthophoto pixels per photo pixel) is given
   (``GeorefConfig.photo_scale``) or searched on a geometric ladder on the first photos;
   the others use it, times the ratio of relative altitudes where EXIF has them.
   Photos with too few RANSAC inliers, or whose matched scale is far from the expected
   one, are rejected with the reason.
2. Each photo's GPS (EXIF) goes to UTM (``geo.wgs84_to_utm``), in the zone of the photos' median longitude unless given.
3. Two fits from orthophoto pixels (column u, row v; 0, 0 = the centre of the top-left
   pixel, as in world files) to UTM, by least squares on the inliers of a RANSAC over
   photo pairs (``outlier_m``):

   * ``similarity``: E = p u + q v + c, N = q u - p v + f (scale, rotation, offset; the
     rotation is the angle from east to the image's +u axis, counter-clockwise);
   * ``north_up``: E = s u + c, N = -s v + f (scale and offset only).

4. ``GeorefResult``: per-photo residuals (m), RMS, GSD (m/px), rotation (deg), and the
   world file (``world_file_text``: A, D, B, E, C, F as ``geo.read_world_file`` reads).

Residuals measure GNSS noise *relative* between the photos (plus registration and
orthophoto errors): a bias common to all photos (consumer GNSS: a few metres) moves the
offset and is invisible in them.
"""
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from gplq_ros.onboard.geo import GeoRef, parse_zone, utm_zone_of, wgs84_to_utm
from gplq_ros.onboard.photos import PhotoError, read_photo
from gplq_ros.onboard.settings import setting, validate

__all__ = ['GeorefError', 'GeorefConfig', 'PhotoTag', 'Photo', 'Registration', 'Fit', 'GeorefResult',
           'read_photo_tag', 'load_photo', 'load_photos', 'register_photo',
           'fit_transform', 'fit_georeference', 'world_file_text', 'write_world_file']

PHOTO_EXTS = ('.jpg', '.jpeg')


class GeorefError(ValueError):
    """Inputs that cannot be geo-referenced (unreadable file, no GPS tag, too few photos
    registered); the message names the file and the reason."""


# ---------------------------------------------------------------- EXIF / XMP

@dataclass(frozen=True)
class PhotoTag:
    lat: float                               # degrees
    lon: float
    rel_alt_m: Optional[float] = None        # above take-off (DJI XMP RelativeAltitude)
    yaw_deg: Optional[float] = None          # camera yaw, clockwise from north (GimbalYaw, else FlightYaw)
    focal_35mm: Optional[float] = None       # 35 mm equivalent focal length, mm
    width: Optional[int] = None              # pixels, from EXIF (the decoder is the authority)
    height: Optional[int] = None


def read_photo_tag(path: Path) -> PhotoTag:
    """GPS position, relative altitude, yaw (gimbal, else flight) and focal length of a (DJI)
    JPEG, read by ``onboard.photos.read_photo``; GeorefError naming the file otherwise."""
    try:
        meta = read_photo(Path(path))
    except PhotoError as e:
        raise GeorefError(str(e)) from None
    yaw = meta.dji('GimbalYawDegree')
    yaw = meta.dji('FlightYawDegree') if yaw is None else yaw
    return PhotoTag(meta.lat, meta.lon, meta.relative_alt_m, yaw, meta.focal_35mm, meta.width, meta.height)


# ---------------------------------------------------------------- photos

@dataclass
class Photo:
    """A geotagged photo: a JPEG file (decoded at a reduced size on demand) or an image array."""
    name: str
    tag: PhotoTag
    path: Optional[Path] = None
    image: Optional[np.ndarray] = None       # grey or BGR; used instead of path when given
    _cache: Dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def gray(self, scale: float) -> np.ndarray:
        """The photo in grey, resized by ``scale`` (JPEG DCT reduction first when it allows)."""
        if self.image is not None:
            img = self.image if self.image.ndim == 2 else cv2.cvtColor(self.image, cv2.COLOR_BGR2GRAY)
            red = 1
        else:
            red = max(r for r in (1, 2, 4, 8) if r * scale <= 1.0 or r == 1)
            if red not in self._cache:
                flag = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
                        4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[red]
                img = cv2.imread(str(self.path), flag)
                if img is None:
                    raise GeorefError(f'photo {self.path}: not decodable as an image')
                self._cache = {red: img}
            img = self._cache[red]
        f = scale * red * (self.full_size()[0] / (img.shape[1] * red))
        if abs(f - 1) < 1e-3:
            return img
        return cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)

    def full_size(self) -> Tuple[int, int]:
        """(width, height) in pixels at full resolution."""
        if self.image is not None:
            return self.image.shape[1], self.image.shape[0]
        if self.tag.width and self.tag.height:
            return int(self.tag.width), int(self.tag.height)
        img = cv2.imread(str(self.path), cv2.IMREAD_REDUCED_GRAYSCALE_8)
        if img is None:
            raise GeorefError(f'photo {self.path}: not decodable as an image')
        self.tag = PhotoTag(**{**self.tag.__dict__, 'width': img.shape[1] * 8, 'height': img.shape[0] * 8})
        return self.tag.width, self.tag.height


def load_photo(path: Path) -> Photo:
    return Photo(Path(path).name, read_photo_tag(path), path=Path(path))


def load_photos(folder: Path) -> List[Photo]:
    """Every JPEG of ``folder`` (sorted by name); GeorefError for a missing folder, no
    JPEGs, or a JPEG without GPS."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GeorefError(f'photos {folder}: not a folder')
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_EXTS and p.is_file())
    if not paths:
        raise GeorefError(f'photos {folder}: no .jpg/.jpeg files')
    return [load_photo(p) for p in paths]


# ---------------------------------------------------------------- config

@dataclass(frozen=True)
class GeorefConfig:
    photo_scale: Optional[float] = setting(None, 'orthophoto pixels per full-resolution photo pixel (None: searched '
                                           'on the first photos)', range=(1e-4, 10.0))
    search_min: float = setting(1 / 64, 'smallest scale tried by the search', range=(1e-4, 10.0))
    search_max: float = setting(1.0, 'largest scale tried by the search', range=(1e-4, 10.0))
    search_photos: int = setting(4, 'photos tried by the scale search before giving up', range=(1, 1000))
    max_features: int = setting(4000, 'SIFT features per image (0: all)', range=(0, 1_000_000))
    ortho_max_side: int = setting(2400, 'the orthophoto is matched downscaled to this long side, px (its result '
                                  'is in full-resolution pixels)', range=(64, 100_000))
    ratio: float = setting(0.75, "Lowe's ratio test threshold", range=(0.1, 1.0))
    model: str = setting('similarity', 'photo -> orthophoto model fitted by RANSAC',
                         choices=('similarity', 'homography'))
    ransac_px: float = setting(4.0, 'RANSAC reprojection threshold, matched-orthophoto pixels', range=(0.1, 100.0))
    min_inliers: int = setting(20, 'a photo needs this many RANSAC inliers to count as registered',
                               range=(4, 100_000))
    scale_tolerance: float = setting(1.5, 'a registration whose scale is off the expected one by more than this '
                                     'factor is rejected', range=(1.01, 100.0))
    utm_zone: Optional[str] = setting(None, "UTM zone, e.g. '15N' (None: from the photos' median longitude)")
    outlier_m: float = setting(8.0, 'a photo whose GPS is further than this from the fit is an outlier, m',
                               range=(0.01, 10_000.0))
    world_model: str = setting('north_up', 'fit written as the world file (geo.read_world_file reads north_up '
                               'only)', choices=('north_up', 'similarity'))

    def __post_init__(self):
        validate(self)
        if self.search_min > self.search_max:
            raise ValueError(f'GeorefConfig.search_min={self.search_min} is above search_max={self.search_max}')
        if self.utm_zone is not None:
            parse_zone(self.utm_zone)


# ---------------------------------------------------------------- registration

@dataclass
class Registration:
    name: str
    ok: bool
    reason: str = ''                         # why not registered
    centre_px: Optional[Tuple[float, float]] = None    # (u, v) in full-resolution orthophoto pixels
    inliers: int = 0
    matches: int = 0
    scale: float = float('nan')              # orthophoto px per full-resolution photo px, as matched
    heading_deg: float = float('nan')        # angle of the photo's +x axis in the orthophoto, clockwise from +u
    yaw_vs_exif_deg: Optional[float] = None  # heading_deg - EXIF yaw, wrapped to [-180, 180)


class _Ortho:
    def __init__(self, ortho: np.ndarray, cfg: GeorefConfig):
        gray = ortho if ortho.ndim == 2 else cv2.cvtColor(ortho[..., :3], cv2.COLOR_BGR2GRAY)
        valid = (gray < 250) & (gray > 5)
        if ortho.ndim == 3 and ortho.shape[2] == 4:
            valid &= ortho[..., 3] > 0
        self.f = min(1.0, cfg.ortho_max_side / max(gray.shape))
        if self.f < 1:
            gray = cv2.resize(gray, None, fx=self.f, fy=self.f, interpolation=cv2.INTER_AREA)
            valid = cv2.resize(valid.astype(np.uint8), (gray.shape[1], gray.shape[0]),
                               interpolation=cv2.INTER_NEAREST) > 0
        mask = cv2.erode(valid.astype(np.uint8) * 255, np.ones((7, 7), np.uint8))
        self.sift = cv2.SIFT_create(nfeatures=cfg.max_features)
        self.kp, self.des = self.sift.detectAndCompute(gray, mask)
        self.xy = np.float32([k.pt for k in self.kp]).reshape(-1, 2)
        self.matcher = cv2.FlannBasedMatcher({'algorithm': 1, 'trees': 4}, {'checks': 64})
        if self.des is not None and len(self.kp) >= 2:
            self.matcher.add([self.des])
            self.matcher.train()


def register_photo(ortho: '_Ortho', photo: Photo, scale: float, cfg: GeorefConfig,
                   expected: Optional[float] = None) -> Registration:
    """Register ``photo`` resized by ``scale`` (orthophoto px per photo px) against ``ortho``."""
    w, h = photo.full_size()
    k = scale * ortho.f                                          # matched-ortho px per photo px
    img = photo.gray(k)
    kp, des = ortho.sift.detectAndCompute(img, None)
    if des is None or len(kp) < cfg.min_inliers or ortho.des is None or len(ortho.kp) < 2:
        return Registration(photo.name, False, f'{0 if des is None else len(kp)} features at scale {scale:.4g}',
                            scale=scale)
    pairs = ortho.matcher.knnMatch(des, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < cfg.ratio * m[1].distance]
    if len(good) < cfg.min_inliers:
        return Registration(photo.name, False, f'{len(good)} matches pass the ratio test (< {cfg.min_inliers})',
                            matches=len(good), scale=scale)
    src = np.float32([kp[m.queryIdx].pt for m in good])
    dst = ortho.xy[[m.trainIdx for m in good]]
    fx = img.shape[1] / w                                        # resized px per full-resolution photo px
    centre = np.float32([[(w - 1) / 2 * fx + (fx - 1) / 2, (h - 1) / 2 * fx + (fx - 1) / 2]])
    if cfg.model == 'homography':
        m, inl = cv2.findHomography(src, dst, cv2.RANSAC, cfg.ransac_px, maxIters=5000, confidence=0.999)
        if m is not None:
            c = cv2.perspectiveTransform(centre[None], m)[0, 0]
            jac = m[:2, :2] - np.outer(c, m[2, :2])
            jac /= (m[2, :2] @ centre[0] + m[2, 2])
    else:
        m, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=cfg.ransac_px,
                                             maxIters=5000, confidence=0.999)
        if m is not None:
            c = m[:, :2] @ centre[0] + m[:, 2]
            jac = m[:, :2]
    n_in = int(inl.sum()) if inl is not None else 0
    if m is None or n_in < cfg.min_inliers:
        return Registration(photo.name, False, f'{n_in} RANSAC inliers of {len(good)} matches (< {cfg.min_inliers})',
                            inliers=n_in, matches=len(good), scale=scale)
    det = float(np.linalg.det(jac))
    s = math.sqrt(abs(det)) / ortho.f * fx                      # full-ortho px per full photo px
    heading = math.degrees(math.atan2(jac[1, 0], jac[0, 0]))
    reg = Registration(photo.name, True, '', ((float(c[0]) + 0.5) / ortho.f - 0.5, (float(c[1]) + 0.5) / ortho.f - 0.5),
                       n_in, len(good), s,
                       heading)
    if photo.tag is not None and photo.tag.yaw_deg is not None:
        reg.yaw_vs_exif_deg = (heading - photo.tag.yaw_deg + 180.0) % 360.0 - 180.0
    ref = expected if expected is not None else scale
    if det <= 0 or not 1 / cfg.scale_tolerance <= s / ref <= cfg.scale_tolerance:
        reg.ok, reg.reason = False, (f'matched scale {s:.4g} is off the expected {ref:.4g} (tolerance '
                                     f'x{cfg.scale_tolerance}; {n_in} inliers)' if det > 0 else 'mirrored match')
    return reg


def _search_ladder(cfg: GeorefConfig) -> List[float]:
    n = int(math.floor(math.log(cfg.search_max / cfg.search_min) / math.log(math.sqrt(2)))) + 1
    return [cfg.search_min * math.sqrt(2) ** i for i in range(n)]


# ---------------------------------------------------------------- fit

@dataclass
class Fit:
    model: str                               # 'similarity' | 'north_up'
    p: float                                 # E = p u + q v + c, N = q u - p v + f
    q: float
    c: float
    f: float
    inliers: List[bool]                      # per point used
    residuals_m: List[float]                 # per point, of every point (outliers included)

    @property
    def gsd_m(self) -> float:
        return math.hypot(self.p, self.q)

    @property
    def rotation_deg(self) -> float:
        """Angle from east to the orthophoto's +u axis, counter-clockwise (0: north-up)."""
        return math.degrees(math.atan2(self.q, self.p))

    @property
    def rms_m(self) -> float:
        r = [x for x, ok in zip(self.residuals_m, self.inliers) if ok]
        return math.sqrt(sum(x * x for x in r) / len(r)) if r else float('nan')

    def apply(self, u, v):
        u, v = np.asarray(u, float), np.asarray(v, float)
        return self.p * u + self.q * v + self.c, self.q * u - self.p * v + self.f

    def world_file(self) -> Tuple[float, float, float, float, float, float]:
        """(A, D, B, E, C, F): the six lines of a world file (C, F: the top-left pixel's centre)."""
        return self.p, self.q, self.q, -self.p, self.c, self.f


def _lstsq(u, v, e, n, model):
    if model == 'north_up':
        a = np.zeros((2 * len(u), 3))
        a[0::2, 0], a[0::2, 1] = u, 1
        a[1::2, 0], a[1::2, 2] = -v, 1
        sol = np.linalg.lstsq(a, np.ravel(np.column_stack([e, n])), rcond=None)[0]
        return sol[0], 0.0, sol[1], sol[2]
    a = np.zeros((2 * len(u), 4))
    a[0::2, 0], a[0::2, 1], a[0::2, 2] = u, v, 1
    a[1::2, 0], a[1::2, 1], a[1::2, 3] = -v, u, 1
    sol = np.linalg.lstsq(a, np.ravel(np.column_stack([e, n])), rcond=None)[0]
    return tuple(sol)


def fit_transform(uv: np.ndarray, en: np.ndarray, model: str = 'similarity', outlier_m: float = 8.0) -> Fit:
    """Pixels (N, 2) -> UTM (N, 2) fit: RANSAC over point pairs (every pair up to 60 points),
    then least squares on the inliers, repeated until the inlier set is stable."""
    uv, en = np.asarray(uv, float), np.asarray(en, float)
    if len(uv) < 2:
        raise GeorefError(f'{len(uv)} registered photo(s): a fit needs at least 2')
    u0, e0 = uv.mean(0), en.mean(0)                      # centred for conditioning
    u, v = uv[:, 0] - u0[0], uv[:, 1] - u0[1]
    e, n = en[:, 0] - e0[0], en[:, 1] - e0[1]

    def resid(sol):
        p, q, c, f = sol
        return np.hypot(p * u + q * v + c - e, q * u - p * v + f - n)
    rng = np.random.default_rng(0)
    idx = [(i, j) for i in range(len(u)) for j in range(i + 1, len(u))]
    if len(idx) > 2000:
        idx = [tuple(rng.choice(len(u), 2, replace=False)) for _ in range(2000)]
    best, best_key = None, None
    for i, j in idx:
        if math.hypot(u[i] - u[j], v[i] - v[j]) < 1e-9:
            continue
        sol = _lstsq(u[[i, j]], v[[i, j]], e[[i, j]], n[[i, j]], model)
        r = resid(sol)
        inl = r < outlier_m
        key = (int(inl.sum()), -float(np.sum(np.minimum(r, outlier_m) ** 2)))
        if best_key is None or key > best_key:
            best, best_key = inl, key
    if best is None or best.sum() < 2:
        raise GeorefError('no two photos agree on a fit (all registered at one pixel?)')
    inl = best
    for _ in range(20):
        sol = _lstsq(u[inl], v[inl], e[inl], n[inl], model)
        r = resid(sol)
        new = r < outlier_m
        if new.sum() < 2 or np.array_equal(new, inl):
            break
        inl = new
    p, q, c, f = sol
    c, f = c + e0[0] - (p * u0[0] + q * u0[1]), f + e0[1] - (q * u0[0] - p * u0[1])
    return Fit(model, float(p), float(q), float(c), float(f), [bool(x) for x in inl], [float(x) for x in r])


def world_file_text(fit: Fit) -> str:
    return ''.join(f'{x!r}\n' for x in (float(v) for v in fit.world_file()))


def write_world_file(path: Path, fit: Fit, force: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f'{path} exists (--force to overwrite)')
    path.write_text(world_file_text(fit))
    return path


# ---------------------------------------------------------------- the whole job

@dataclass
class GeorefResult:
    zone: int
    north: bool
    registrations: List[Registration]
    utm: Dict[str, Tuple[float, float]]       # photo name -> GPS as UTM (E, N)
    similarity: Optional[Fit]
    north_up: Fit
    names: List[str]                          # the fitted photos, in the fits' point order
    world_model: str = 'north_up'

    @property
    def world(self) -> Fit:
        return self.north_up if self.world_model == 'north_up' or self.similarity is None else self.similarity

    @property
    def zone_text(self) -> str:
        return f'{self.zone}{"N" if self.north else "S"}'

    def georef(self) -> GeoRef:
        """The ``GeoRef`` of the north-up fit (the map origin: the top-left pixel's corner)."""
        fit = self.north_up
        return GeoRef(self.zone, self.north, fit.c - fit.p / 2, fit.f + fit.p / 2)

    def to_dict(self) -> dict:
        def fit(f):
            return None if f is None else {
                'model': f.model, 'gsd_m': f.gsd_m, 'rotation_deg': f.rotation_deg, 'rms_m': f.rms_m,
                'world_file': list(f.world_file()),
                'residuals_m': dict(zip(self.names, f.residuals_m)), 'inliers': dict(zip(self.names, f.inliers))}
        return {'utm_zone': self.zone_text, 'world_model': self.world_model,
                'photos': [{'name': r.name, 'registered': r.ok, 'reason': r.reason, 'centre_px': r.centre_px,
                            'inliers': r.inliers, 'matches': r.matches, 'scale': r.scale,
                            'heading_deg': r.heading_deg, 'yaw_vs_exif_deg': r.yaw_vs_exif_deg,
                            'utm': self.utm.get(r.name)} for r in self.registrations],
                'similarity': fit(self.similarity), 'north_up': fit(self.north_up)}

    def report(self) -> str:
        lines = []
        ok = [r for r in self.registrations if r.ok]
        lines.append(f'registered {len(ok)}/{len(self.registrations)} photos')
        for r in self.registrations:
            if not r.ok:
                lines.append(f'  {r.name}: not registered: {r.reason}')
        fits = [f for f in (self.similarity, self.north_up) if f is not None]
        head = f'  {"photo":<16} {"u px":>8} {"v px":>8} {"inliers":>7} {"yaw-EXIF":>8} ' + ' '.join(
            f'{f.model + " m":>14}' for f in fits)
        lines.append(head)
        for i, name in enumerate(self.names):
            r = next(x for x in self.registrations if x.name == name)
            dyaw = f'{r.yaw_vs_exif_deg:+8.1f}' if r.yaw_vs_exif_deg is not None else f'{"-":>8}'
            res = ' '.join(f'{f.residuals_m[i]:>12.2f}{"  " if f.inliers[i] else " *"}' for f in fits)
            lines.append(f'  {name:<16} {r.centre_px[0]:8.1f} {r.centre_px[1]:8.1f} {r.inliers:7d} {dyaw} {res}')
        lines.append('  (* outlier: further than outlier_m from the fit; not in the RMS. yaw-EXIF: the photo\'s '
                     'matched heading in the orthophoto minus its EXIF yaw, deg; about 0 for a north-up '
                     'orthophoto)')
        for f in fits:
            lines.append(f'{f.model}: GSD {f.gsd_m:.5f} m/px, rotation {f.rotation_deg:+.3f} deg, RMS residual '
                         f'{f.rms_m:.2f} m over {sum(f.inliers)} photos')
        w = self.world
        epsg = 32600 + self.zone if self.north else 32700 + self.zone
        lines.append(f'world file ({w.model}, UTM {self.zone_text}, EPSG:{epsg}): pixel size {w.gsd_m!r} m')
        return '\n'.join(lines)


def fit_georeference(ortho: Union[np.ndarray, Path], photos: Sequence[Photo], cfg: GeorefConfig = GeorefConfig(),
                     log=None) -> GeorefResult:
    """Register ``photos`` in ``ortho`` (an image array or a path), fit pixel -> UTM
    (similarity and north-up) and return the result (``report()``, ``world``)."""
    if not isinstance(ortho, np.ndarray):
        path = Path(ortho)
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise GeorefError(f'orthophoto {path}: missing or not decodable as an image')
        if img.dtype != np.uint8:
            img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        ortho = img
    if not photos:
        raise GeorefError('no photos')
    say = log or (lambda msg: None)
    o = _Ortho(ortho, cfg)
    if o.des is None or len(o.kp) < cfg.min_inliers:
        raise GeorefError(f'orthophoto: {len(o.kp)} features (blank image?)')
    alts = [p.tag.rel_alt_m for p in photos]
    use_alt = all(a is not None and a > 0 for a in alts)
    regs: Dict[str, Registration] = {}
    ref_scale, ref_alt = cfg.photo_scale, None
    if ref_scale is None:                                        # ladder search on the first photos
        top = max(ortho.shape[:2]) / min(photos[0].full_size())      # a photo is no larger than the orthophoto
        ladder = [s for s in _search_ladder(cfg) if s <= top] or [min(top, cfg.search_max)]
        for ph in photos[:cfg.search_photos]:
            best = None
            for s in ladder:                                    # small (cheap) first; the first that registers
                r = register_photo(o, ph, s, cfg)
                if best is None or (r.ok, r.inliers) > (best.ok, best.inliers):
                    best = r
                if r.ok:
                    break
            if best.ok:
                best = register_photo(o, ph, best.scale, cfg)   # again at the scale it matched at
            if best.ok:
                ref_scale, ref_alt = best.scale, ph.tag.rel_alt_m
                regs[ph.name] = best
                say(f'{ph.name}: scale {best.scale:.4g} orthophoto px per photo px ({best.inliers} inliers)')
                break
            regs[ph.name] = Registration(ph.name, False, f'scale search: best {best.reason}', inliers=best.inliers)
        if ref_scale is None:
            raise GeorefError(f'scale search: none of the first {min(len(photos), cfg.search_photos)} photos '
                              f'registered at scales {cfg.search_min:.4g}..{cfg.search_max:.4g}')
    elif use_alt:
        ref_alt = float(np.median(alts))
    for ph in photos:
        if ph.name in regs and regs[ph.name].ok:
            continue
        s = ref_scale * (ref_alt / ph.tag.rel_alt_m if use_alt and ref_alt else 1.0)
        regs[ph.name] = register_photo(o, ph, s, cfg)
        r = regs[ph.name]
        say(f'{ph.name}: ' + (f'{r.inliers} inliers' if r.ok else f'not registered: {r.reason}'))
    ordered = [regs[p.name] for p in photos]
    zone, north = parse_zone(cfg.utm_zone) if cfg.utm_zone else utm_zone_of(
        float(np.median([p.tag.lat for p in photos])), float(np.median([p.tag.lon for p in photos])))
    utm = {p.name: wgs84_to_utm(p.tag.lat, p.tag.lon, zone, north) for p in photos}
    names = [r.name for r in ordered if r.ok]
    if len(names) < 2:
        raise GeorefError(f'{len(names)} of {len(photos)} photos registered: a fit needs at least 2 ('
                          + '; '.join(f'{r.name}: {r.reason}' for r in ordered if not r.ok)[:2000] + ')')
    uv = np.array([regs[n].centre_px for n in names])
    en = np.array([utm[n] for n in names])
    sim = fit_transform(uv, en, 'similarity', cfg.outlier_m) if len(names) >= 2 else None
    nup = fit_transform(uv, en, 'north_up', cfg.outlier_m)
    return GeorefResult(zone, north, ordered, utm, sim, nup, names, cfg.world_model)
