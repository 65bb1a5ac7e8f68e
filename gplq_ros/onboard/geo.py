"""Geo-referencing of a place map (numpy only): UTM <-> WGS-84 and north-up world files.

A map's ``map`` frame (REP 103) has x east and y north in metres, origin at the top-left
corner of the orthophoto's top-left pixel (``gplq_ros.onboard.flight``). When the
orthophoto is geo-referenced, ``GeoRef`` holds the UTM zone and the UTM easting/northing
of that origin, so ``E = origin_e + x`` and ``N = origin_n + y`` (north-up orthophotos only).

UTM -> latitude/longitude uses Krueger's series to the third order in n (Karney 2011):
well under a millimetre inside a zone, checked against PROJ in the tests.
"""
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Tuple

WGS84_A = 6378137.0
WGS84_F = 1 / 298.257223563
UTM_K0 = 0.9996


@dataclass(frozen=True)
class GeoRef:
    zone: int                # UTM zone 1..60
    north: bool              # northern hemisphere
    origin_e: float          # UTM easting of the map origin (top-left pixel corner), m
    origin_n: float          # UTM northing of the map origin, m

    def __post_init__(self):
        if not 1 <= self.zone <= 60:
            raise ValueError(f'GeoRef.zone={self.zone!r}: must be 1..60')
        if not (0 <= self.origin_e <= 1_000_000 and 0 <= self.origin_n <= 10_000_000):
            raise ValueError(f'GeoRef origin=({self.origin_e!r}, {self.origin_n!r}): not a UTM easting/northing')

    @property
    def crs(self) -> str:
        return f'EPSG:{32600 + self.zone if self.north else 32700 + self.zone}'

    def to_wgs84(self, x: float, y: float) -> Tuple[float, float]:
        """(latitude, longitude) in degrees of the map point (x, y) metres."""
        return utm_to_wgs84(self.origin_e + x, self.origin_n + y, self.zone, self.north)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_zone(text: str) -> Tuple[int, bool]:
    """'12N' / '33S' -> (12, True) / (33, False)."""
    t = text.strip().upper()
    if len(t) < 2 or t[-1] not in 'NS' or not t[:-1].isdigit() or not 1 <= int(t[:-1]) <= 60:
        raise ValueError(f'utm zone={text!r}: expected a zone number 1..60 and N or S, e.g. 12N')
    return int(t[:-1]), t[-1] == 'N'


def _series():
    f = WGS84_F
    n = f / (2 - f)
    a_big = WGS84_A / (1 + n) * (1 + n ** 2 / 4 + n ** 4 / 64)
    beta = (n / 2 - 2 * n ** 2 / 3 + 37 * n ** 3 / 96, n ** 2 / 48 + n ** 3 / 15, 17 * n ** 3 / 480)
    delta = (2 * n - 2 * n ** 2 / 3 - 2 * n ** 3, 7 * n ** 2 / 3 - 8 * n ** 3 / 5, 56 * n ** 3 / 15)
    return a_big, beta, delta


def utm_to_wgs84(easting: float, northing: float, zone: int, north: bool) -> Tuple[float, float]:
    """(latitude, longitude) in degrees of a UTM coordinate (WGS-84 ellipsoid)."""
    a_big, beta, delta = _series()
    xi = (northing - (0.0 if north else 10_000_000.0)) / (UTM_K0 * a_big)
    eta = (easting - 500_000.0) / (UTM_K0 * a_big)
    xi_p = xi - sum(b * math.sin(2 * j * xi) * math.cosh(2 * j * eta) for j, b in enumerate(beta, 1))
    eta_p = eta - sum(b * math.cos(2 * j * xi) * math.sinh(2 * j * eta) for j, b in enumerate(beta, 1))
    chi = math.asin(math.sin(xi_p) / math.cosh(eta_p))
    lat = chi + sum(d * math.sin(2 * j * chi) for j, d in enumerate(delta, 1))
    lon0 = math.radians(zone * 6 - 183)
    lon = lon0 + math.atan2(math.sinh(eta_p), math.cos(xi_p))
    return math.degrees(lat), (math.degrees(lon) + 180.0) % 360.0 - 180.0     # zone 60 east of 180 deg wraps


def wgs84_to_utm(lat: float, lon: float, zone: int, north: bool) -> Tuple[float, float]:
    """UTM (easting, northing) in ``zone`` of a WGS-84 latitude/longitude (degrees): Krueger's
    series to the third order in n (Karney 2011), the inverse of ``geo.utm_to_wgs84``."""
    a_big, _, _ = _series()
    n = WGS84_F / (2 - WGS84_F)
    alpha = (n / 2 - 2 * n ** 2 / 3 + 5 * n ** 3 / 16, 13 * n ** 2 / 48 - 3 * n ** 3 / 5, 61 * n ** 3 / 240)
    phi = math.radians(lat)
    dlon = math.radians((lon - (zone * 6 - 183) + 180.0) % 360.0 - 180.0)
    c = 2 * math.sqrt(n) / (1 + n)
    t = math.sinh(math.atanh(math.sin(phi)) - c * math.atanh(c * math.sin(phi)))
    xi_p = math.atan2(t, math.cos(dlon))
    eta_p = math.atanh(math.sin(dlon) / math.sqrt(1 + t * t))
    xi = xi_p + sum(a * math.sin(2 * j * xi_p) * math.cosh(2 * j * eta_p) for j, a in enumerate(alpha, 1))
    eta = eta_p + sum(a * math.cos(2 * j * xi_p) * math.sinh(2 * j * eta_p) for j, a in enumerate(alpha, 1))
    return 500_000.0 + UTM_K0 * a_big * eta, (0.0 if north else 10_000_000.0) + UTM_K0 * a_big * xi


def utm_zone_of(lat: float, lon: float) -> Tuple[int, bool]:
    """The standard UTM zone (number, north) of a point (no Norway/Svalbard exceptions)."""
    return int(((lon + 180.0) % 360.0) // 6) + 1, lat >= 0


def read_world_file(path: Path, gsd_m: float) -> Tuple[float, float]:
    """UTM (easting, northing) of the top-left pixel corner from a north-up world file
    (.pgw/.tfw/.jgw: pixel width, 0, 0, -pixel height, centre x and y of the top-left pixel);
    refuses rotated files and a pixel size other than ``gsd_m``."""
    path = Path(path)
    try:
        vals = [float(v) for v in path.read_text().split()]
    except (OSError, ValueError) as e:
        raise ValueError(f'world file {path}: not readable as six numbers ({e})') from None
    if len(vals) != 6:
        raise ValueError(f'world file {path}: {len(vals)} numbers, expected 6')
    a, d, b, e, c, f = vals
    if d != 0 or b != 0:
        raise ValueError(f'world file {path}: rotation terms ({d}, {b}) are not 0; only north-up orthophotos')
    if not (math.isclose(a, gsd_m, rel_tol=1e-6) and math.isclose(-e, gsd_m, rel_tol=1e-6)):
        raise ValueError(f'world file {path}: pixel size ({a}, {-e}) m is not gsd_m={gsd_m}')
    return c - a / 2, f - e / 2
