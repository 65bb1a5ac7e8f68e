"""GeoTIFF orthophotos (numpy + tifffile + OpenCV): the georeference and the GSD from the
file's own tags, and its pixels.

**Why tifffile** (not rasterio or GDAL's Python bindings): it is pure Python on numpy,
maintained, small, and needs no GDAL native library (which a drone's or a ROS machine's
Python may not have, and whose wheels are large); it parses the TIFF container (classic
and BigTIFF, either byte order) and hands over the GeoTIFF tags as numbers. What they mean
is decoded here (GeoTIFF 1.1, OGC 19-008r4), for the one case a place map takes: a north-up
grid of square pixels in WGS 84 / UTM.

Tags read from the first image (IFD) of the file:

* ``ModelPixelScaleTag`` (33550, pixel size ``(sx, sy, sz)``) with one ``ModelTiepointTag``
  (33922, raster ``(i, j, k)`` at model ``(X, Y, Z)``), or ``ModelTransformationTag``
  (34264, a 4x4 raster-to-model matrix; rotation or shear terms are refused);
* ``GeoKeyDirectoryTag`` (34735) with its keys: ``GTModelTypeGeoKey`` (1024),
  ``GTRasterTypeGeoKey`` (1025: 1 PixelIsArea, the default, raster (0, 0) is the top-left
  corner of the top-left pixel; 2 PixelIsPoint, raster (0, 0) is that pixel's centre, so the
  corner is half a pixel further up and left), ``GeographicTypeGeoKey`` (2048),
  ``ProjectedCSTypeGeoKey`` (3072: EPSG 32601-32660 = WGS 84 / UTM zone 1-60 N, 32701-32760
  = zone 1-60 S) and ``ProjLinearUnitsGeoKey`` (3076: 9001 metre, when present).

Refused, with the file, the tag or key and the value named: another projected CRS (e.g.
3857 Web Mercator, national grids, NAD83 / ETRS89 UTM zones); **a geographic CRS** (EPSG
4326: pixels in degrees of latitude and longitude): such a grid is not north-up in UTM (it
is turned by the meridian convergence, about 2 degrees at a zone's edge at 45 degrees
latitude, so pixels far from the tiepoint land tens of pixels off in a 1,000 px image)
and its pixels are not square in metres (longitude degrees shrink with cos(latitude)), so
using it would mean resampling the orthophoto; gdalwarp does that properly, and the message
gives the command with the file's UTM zone; pixels that are not square (the map is built
with one GSD: refused when one GSD would misplace the image's far edge by more than half a
pixel); several tiepoints (ground control points, not a grid); a pixel scale of 0 or less.

A TIFF without any of these tags is a plain image: ``read_geotiff`` returns ``georef=None``
and the map is built un-geo-referenced, as from a PNG or JPEG.

**Pixels** (``read_orthophoto``): OpenCV first (its libtiff decodes the compressions GDAL
writes: none, LZW, Deflate with or without predictor, JPEG, PackBits; tiled or striped, pixel
or band interleaved; RGBA loses its alpha band), then tifffile for what OpenCV's build lacks
(LZMA; tifffile alone, without the optional imagecodecs package, decodes only none, Deflate
and LZMA). 8-bit samples only: deeper images are refused (convert them first, e.g.
``gdal_translate -ot Byte -scale``).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import cv2
import numpy as np
import tifffile

from gplq_ros.onboard.geo import GeoRef, utm_zone_of

__all__ = ['GeoTiff', 'GeoTiffError', 'read_geotiff', 'read_orthophoto', 'check_8bit', 'TIFF_SUFFIXES',
           'is_tiff']

TIFF_SUFFIXES = ('.tif', '.tiff')
MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION = 33550, 33922, 34264
GEO_KEY_DIRECTORY, GEO_DOUBLE_PARAMS, GEO_ASCII_PARAMS = 34735, 34736, 34737
MODEL_TYPE_KEY, RASTER_TYPE_KEY, GEOGRAPHIC_TYPE_KEY = 1024, 1025, 2048
PROJECTED_CS_KEY, PROJ_LINEAR_UNITS_KEY = 3072, 3076
GEO_TAGS = (MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION, GEO_KEY_DIRECTORY, GEO_DOUBLE_PARAMS,
            GEO_ASCII_PARAMS)
PIXEL_IS_AREA, PIXEL_IS_POINT = 1, 2
LINEAR_METRE = 9001
USER_DEFINED = 32767
MAX_SQUARE_ERROR_PX = 0.5     # one GSD may misplace the far edge of the image by at most this
MAX_ROTATION_PX = 0.01        # rotation/shear terms may move a corner by at most this


class GeoTiffError(ValueError):
    """A GeoTIFF whose georeference a place map cannot take; the message names the file,
    the tag or key and its value."""


@dataclass(frozen=True)
class GeoTiff:
    path: Path
    width: int                          # pixels
    height: int
    georef: Optional[GeoRef]            # None: a plain TIFF (no georeference tags)
    gsd_m: Optional[float]              # metres per pixel (square pixels), None without georeference
    pixel_is_point: bool = False        # GTRasterTypeGeoKey = PixelIsPoint (origin shifted half a pixel)
    source: str = ''                    # which tags gave the grid: 'tiepoint+scale' or 'transformation'

    def describe(self) -> str:
        if self.georef is None:
            return f'{self.path.name}: a TIFF without georeference'
        return (f'{self.path.name}: {self.georef.crs} (WGS 84 / UTM {self.georef.zone}'
                f'{"N" if self.georef.north else "S"}), GSD {self.gsd_m:g} m/px, top-left corner '
                f'{self.georef.origin_e:.3f} E {self.georef.origin_n:.3f} N '
                f'({self.source}, {"PixelIsPoint" if self.pixel_is_point else "PixelIsArea"})')


def is_tiff(path) -> bool:
    return Path(path).suffix.lower() in TIFF_SUFFIXES


def _numbers(tags, code) -> Optional[Tuple[float, ...]]:
    v = tags.get(code)
    if v is None:
        return None
    return tuple(float(x) for x in (v if isinstance(v, (tuple, list, np.ndarray)) else (v,)))


def _geokeys(path: Path, tags) -> Dict[int, object]:
    """{key id: value} of the GeoKeyDirectoryTag (SHORT values in place; DOUBLE and ASCII
    values from GeoDoubleParamsTag / GeoAsciiParamsTag)."""
    d = tags[GEO_KEY_DIRECTORY]
    d = [int(x) for x in (d if isinstance(d, (tuple, list, np.ndarray)) else (d,))]
    if len(d) < 4 or d[0] != 1 or len(d) < 4 + 4 * d[3]:
        raise GeoTiffError(f'{path}: GeoKeyDirectoryTag (34735) header {tuple(d[:4])} with {len(d)} values: '
                           'not a GeoTIFF key directory (version 1, 4 values per key)')
    doubles = _numbers(tags, GEO_DOUBLE_PARAMS) or ()
    text = str(tags.get(GEO_ASCII_PARAMS, ''))
    keys = {}
    for k in range(d[3]):
        key, location, count, offset = d[4 + 4 * k: 8 + 4 * k]
        if location == 0:
            keys[key] = offset
        elif location == GEO_DOUBLE_PARAMS:
            keys[key] = doubles[offset:offset + count]
        elif location == GEO_ASCII_PARAMS:
            keys[key] = text[offset:offset + count].rstrip('|\x00')
        elif location == GEO_KEY_DIRECTORY:
            keys[key] = tuple(d[offset:offset + count])
        else:
            keys[key] = None                # stored in a tag we do not read
    return keys


def _utm_of_crs(path: Path, keys: Dict[int, object], grid) -> Tuple[int, bool]:
    """(zone, north) from the GeoKeys, or GeoTiffError saying what the CRS is and what to do."""
    proj = keys.get(PROJECTED_CS_KEY)
    geog = keys.get(GEOGRAPHIC_TYPE_KEY)
    model = keys.get(MODEL_TYPE_KEY)
    if proj is None and (model == 2 or geog is not None):
        lon, lat = grid
        zone, north = utm_zone_of(lat, lon) if -90 <= lat <= 90 else (None, True)
        epsg = f'{32600 + zone if north else 32700 + zone}' if zone else '326zz (north) / 327zz (south)'
        raise GeoTiffError(
            f'{path}: GeographicTypeGeoKey={geog} (GTModelTypeGeoKey={model}): a latitude/longitude grid, not a '
            'north-up grid in metres (a place map needs WGS 84 / UTM: ProjectedCSTypeGeoKey 326zz or 327zz); '
            f'reproject it to its UTM zone, e.g. gdalwarp -t_srs EPSG:{epsg} -tr GSD GSD -r bilinear '
            f'{path.name} ortho_utm.tif (GSD in metres), then run gplq_map on ortho_utm.tif')
    if proj is None:
        raise GeoTiffError(f'{path}: GeoKeyDirectoryTag (34735) has no ProjectedCSTypeGeoKey (3072) (keys '
                           f'{sorted(keys)}): the CRS is not WGS 84 / UTM; reproject it with gdalwarp -t_srs '
                           'EPSG:326zz (north) / 327zz (south)')
    if not isinstance(proj, int) or not (32601 <= proj <= 32660 or 32701 <= proj <= 32760):
        what = 'user-defined' if proj == USER_DEFINED else 'not a WGS 84 / UTM zone, EPSG 326zz/327zz'
        raise GeoTiffError(f'{path}: ProjectedCSTypeGeoKey={proj} ({what}); reproject it to WGS 84 / UTM: '
                           f'gdalwarp -t_srs EPSG:326zz (north) / 327zz (south) {path.name} ortho_utm.tif')
    units = keys.get(PROJ_LINEAR_UNITS_KEY)
    if units is not None and units != LINEAR_METRE:
        raise GeoTiffError(f'{path}: ProjLinearUnitsGeoKey={units} (3076): not metres (9001)')
    return (proj - 32600, True) if proj < 32700 else (proj - 32700, False)


def read_geotiff(path) -> GeoTiff:
    """The georeference (``GeoRef``: UTM zone, hemisphere, the top-left pixel corner) and GSD
    of a GeoTIFF (see the module text); ``georef=None`` for a TIFF without georeference tags.

    Raises:
        GeoTiffError: a georeference a place map cannot take (message: file, tag/key, value).
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'orthophoto {path} not found')
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            tags = {t.code: t.value for t in page.tags.values() if t.code in GEO_TAGS}
            width, height = int(page.imagewidth), int(page.imagelength)
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as e:    # IndexError: no IFD
        raise GeoTiffError(f'{path}: not a readable TIFF ({e})') from None
    scale = _numbers(tags, MODEL_PIXEL_SCALE)
    ties = _numbers(tags, MODEL_TIEPOINT)
    matrix = _numbers(tags, MODEL_TRANSFORMATION)
    has_keys = GEO_KEY_DIRECTORY in tags
    if scale is None and ties is None and matrix is None:
        if has_keys:
            raise GeoTiffError(f'{path}: GeoKeyDirectoryTag (34735) without ModelPixelScaleTag (33550) + '
                               'ModelTiepointTag (33922) or ModelTransformationTag (34264): no pixel grid')
        return GeoTiff(path, width, height, None, None)

    # the grid: model X = x0 + sx * i, Y = y0 - sy * j for raster (i, j)
    if matrix is not None:
        if len(matrix) != 16:
            raise GeoTiffError(f'{path}: ModelTransformationTag (34264) has {len(matrix)} values, expected 16')
        a, b, _, d, e, f, _, h = matrix[:8]
        if abs(b) * height > MAX_ROTATION_PX * abs(a) or abs(e) * width > MAX_ROTATION_PX * abs(f):
            raise GeoTiffError(f'{path}: ModelTransformationTag (34264) rotation/shear terms ({b!r}, {e!r}) are not '
                               '0: only north-up orthophotos (warp it north-up: gdalwarp -t_srs EPSG:326zz ...)')
        if a <= 0 or f >= 0:
            raise GeoTiffError(f'{path}: ModelTransformationTag (34264) pixel size ({a!r}, {f!r}): not north-up '
                               '(x must grow east with the column, y fall south with the row)')
        sx, sy, x0, y0, source = a, -f, d, h, 'transformation'
    else:
        if scale is None or ties is None:
            missing = 'ModelPixelScaleTag (33550)' if scale is None else 'ModelTiepointTag (33922)'
            raise GeoTiffError(f'{path}: {missing} is missing (no ModelTransformationTag (34264) either): no pixel '
                               'grid')
        if len(ties) != 6:
            raise GeoTiffError(f'{path}: ModelTiepointTag (33922) holds {len(ties) // 6} tiepoints: ground control '
                               'points, not a grid; warp it first (gdalwarp -t_srs EPSG:326zz ...)')
        if len(scale) < 2 or not (scale[0] > 0 and scale[1] > 0):
            raise GeoTiffError(f'{path}: ModelPixelScaleTag (33550)={scale}: pixel sizes must be > 0 '
                               '(north-up: x east with the column, y south with the row)')
        i, j, _, x, y, _ = ties
        sx, sy = scale[0], scale[1]
        x0, y0, source = x - i * sx, y + j * sy, 'tiepoint+scale'
    if not has_keys:
        raise GeoTiffError(f'{path}: georeference tags ({source}) but no GeoKeyDirectoryTag (34735): the CRS is '
                           'unknown (set it: gdal_edit.py -a_srs EPSG:326zz)')
    keys = _geokeys(path, tags)
    raster = keys.get(RASTER_TYPE_KEY, PIXEL_IS_AREA)
    if raster not in (PIXEL_IS_AREA, PIXEL_IS_POINT):
        raise GeoTiffError(f'{path}: GTRasterTypeGeoKey={raster} (1025): expected 1 (PixelIsArea) or 2 '
                           '(PixelIsPoint)')
    if raster == PIXEL_IS_POINT:         # raster (0, 0) is the top-left pixel's centre
        x0, y0 = x0 - sx / 2, y0 + sy / 2
    zone, north = _utm_of_crs(path, keys, (x0 + sx * width / 2, y0 - sy * height / 2))
    gsd = (sx + sy) / 2
    off_px = max(width, height) * abs(sx - sy) / 2 / gsd
    if off_px > MAX_SQUARE_ERROR_PX:
        raise GeoTiffError(f'{path}: pixels are not square ({source}: {sx!r} m east, {sy!r} m south per pixel); one '
                           f'GSD would misplace the image\'s far edge by {off_px:.2g} px; resample to square pixels '
                           '(gdalwarp -tr GSD GSD)')
    try:
        georef = GeoRef(zone, north, float(x0), float(y0))
    except ValueError as e:
        raise GeoTiffError(f'{path}: {e} (top-left corner from {source})') from None
    return GeoTiff(path, width, height, georef, float(gsd), raster == PIXEL_IS_POINT, source)


def read_orthophoto(path) -> np.ndarray:
    """An orthophoto as uint8 RGB (H, W, 3): OpenCV, and for a TIFF OpenCV cannot decode,
    tifffile (see the module text). Refused with the file named: undecodable pixels, and
    samples deeper than 8 bits (OpenCV would keep the top 8 bits: an 11- or 12-bit satellite
    image would turn almost black, and a map of it useless)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'orthophoto {path} not found')
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)   # libtiff: "unknown field 33550"
    try:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if bgr is not None:
        arr = bgr[..., ::-1]
    elif not is_tiff(path):
        raise ValueError(f'cannot read image file {path}')
    else:
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                arr, axes = page.asarray(), page.axes
        except Exception as e:     # tifffile's decoders raise several types (KeyError for a missing codec)
            raise GeoTiffError(f'{path}: neither OpenCV nor tifffile can decode its pixels ({type(e).__name__}: '
                               f'{e})') from None
        if axes.startswith('S') and arr.ndim == 3:          # planar configuration: (samples, Y, X)
            arr = np.moveaxis(arr, 0, -1)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise GeoTiffError(f'{path}: image of shape {arr.shape} (axes {axes}): expected grey, RGB or RGBA')
    check_8bit(path, arr.dtype, arr)
    return np.ascontiguousarray(arr[..., :3])


def check_8bit(path, dtype, values: Optional[np.ndarray] = None) -> None:
    """ValueError unless the samples are uint8 (``values``, when given, have their range named):
    the refusal of ``read_orthophoto``, shared with the windowed reader (``orthosource``), which
    knows the sample type from the tags before it decodes any pixel."""
    if np.dtype(dtype) != np.uint8:
        seen = '' if values is None else f' (values {values.min()}..{values.max()})'
        raise ValueError(f'{path}: {np.dtype(dtype)} samples{seen}; gplq_map takes 8-bit images, as the camera gives: '
                         'convert it first (e.g. gdal_translate -ot Byte -scale LOW HIGH 0 255, with LOW/HIGH the '
                         'range to keep)')
