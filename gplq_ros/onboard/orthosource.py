"""Orthophoto sources for building a place map shard by shard (numpy + tifffile + OpenCV):
windowed pixel access to orthophotos larger than memory, and several orthophotos as one.

An ``OrthoSource`` is a north-up raster of square pixels: ``shape`` (rows, cols), ``gsd_m``
(metres per pixel), ``georef`` (``geo.GeoRef``: UTM zone and the easting/northing of the
top-left pixel corner; None when not geo-referenced), ``name`` and ``sha256`` (of the file).
``read(row0, col0, rows, cols)`` returns exactly that window as uint8 RGB ``(rows, cols, 3)``,
0 where it leaves the raster; ``coverage(...)`` the window's ``(rows, cols)`` bool mask of image
data; ``read_with_coverage(...)`` both at the cost of one read. Windows are in the source's own
pixels and may start left of or above it (negative ``row0``/``col0``).

* ``TiffSource``: a TIFF or GeoTIFF read window by window: only the tiles or strips that the
  window intersects are read from the file and decoded (uncompressed ones: only the window's
  rows and columns of them), so memory is the window's, not the raster's. Georeference and GSD
  from the file's tags (``geotiff.read_geotiff``).
* ``ImageSource``: a PNG or JPEG, decoded whole once (OpenCV cannot decode a window of one).
* ``Mosaic``: geo-referenced sources of one UTM zone and GSD in one frame.
* ``open_source``: ``TiffSource`` for .tif/.tiff, else ``ImageSource``.

Pixels are those of ``geotiff.read_orthophoto`` (the whole-image reader gplq_map uses): uint8
RGB, grey repeated to three channels, bands after the third dropped, samples deeper than 8 bits
refused with its message; RGB with an unassociated alpha band comes premultiplied by it, as
OpenCV's libtiff gives it to ``read_orthophoto``. Coverage: inside the raster and, for a TIFF,
not in a missing tile of a sparse file (byte count 0), not transparent (alpha 0, when the TIFF
has an alpha band) and not GDAL's nodata value in every colour band (GDAL_NODATA tag 42113,
when present). A PNG's alpha is not read (``read_orthophoto`` drops it): its coverage is its
rectangle.

TIFF decoding, per tile or strip: tifffile's own decoder (``TiffPage.decode(data, index)``,
without the optional imagecodecs package: Deflate (8 and 32946) and LZMA, with or without the
horizontal predictor; PackBits in pure Python; ZSTD only on Python >= 3.14) or OpenCV's libtiff
on a one-segment TIFF made of the segment's bytes and the page's coding tags (LZW, JPEG with
its tables, YCbCr JPEG, PackBits; OpenCV first for these). Which one is picked once, by
decoding the first segment; a file neither decodes is refused at construction with the
compression named. Uncompressed segments are read directly (no decoder).
"""
import hashlib
import math
import struct
from functools import cached_property
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import tifffile

from gplq_ros.onboard.fileformat import sha256_file
from gplq_ros.onboard.geo import GeoRef
from gplq_ros.onboard.geotiff import GeoTiffError, check_8bit, is_tiff, read_geotiff, read_orthophoto

__all__ = ['OrthoSource', 'TiffSource', 'ImageSource', 'Mosaic', 'open_source', 'OrthoSourceError', 'MosaicError',
           'check_window', 'write_tiled_geotiff', 'mosaic_test_area', 'MOSAIC_GSD_TOLERANCE']

MAX_INDEX = 2 ** 31 - 1           # window rows/cols and their starts, in absolute value
MOSAIC_GSD_TOLERANCE = 1e-3       # a mosaic's sources may differ in GSD by this share
GSD_TAG_TOLERANCE = 0.01          # a gsd_m given for a GeoTIFF may differ from its tags by this share (as gplq_map)
RAW_SPAN_SLACK = 256 * 1024       # uncompressed: read whole segment rows when that costs < 2x the window's bytes + this
OPENCV_FIRST = {5, 6, 7, 33007, 34892, 32773}   # LZW, JPEG (old, new, ...), PackBits: libtiff decodes them in C
PHOTOMETRIC_GREY, PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR = 1, 2, 6
GDAL_NODATA = 42113
ALPHA_SAMPLES = ASSOCIATED_ALPHA, UNASSOCIATED_ALPHA = (1, 2)     # ExtraSamples values
RECOMPRESS = 'gdal_translate -co TILED=YES -co COMPRESS=DEFLATE IN.tif OUT.tif'


class OrthoSourceError(ValueError):
    """An orthophoto or a window a source cannot take; the message names the file (or source),
    the field or tag and its value."""


class MosaicError(OrthoSourceError):
    """Sources that cannot form one mosaic (no georeference, other UTM zone, other GSD)."""


def _label(source) -> str:
    return str(getattr(source, 'path', None) or source.name)


def check_window(owner: str, row0, col0, rows, cols) -> Tuple[int, int, int, int]:
    """The window as Python ints, or OrthoSourceError naming ``owner``, the field and its value:
    integers (not bool or float), starts within +-2**31-1, sizes 0..2**31-1."""
    out = []
    for field, v in (('row0', row0), ('col0', col0), ('rows', rows), ('cols', cols)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise OrthoSourceError(f'{owner}: window {field}={v!r}: must be an integer (pixels)')
        if not -MAX_INDEX <= v <= MAX_INDEX:
            raise OrthoSourceError(f'{owner}: window {field}={v!r}: out of range (|{field}| <= {MAX_INDEX})')
        if field in ('rows', 'cols') and v < 0:
            raise OrthoSourceError(f'{owner}: window {field}={v!r}: a size must be >= 0')
        out.append(int(v))
    return tuple(out)


def _check_gsd(owner, gsd_m) -> float:
    if isinstance(gsd_m, bool) or not isinstance(gsd_m, (int, float, np.floating)) or not (
            math.isfinite(gsd_m) and gsd_m > 0):
        raise OrthoSourceError(f'{owner}: gsd_m={gsd_m!r}: must be a number of metres per pixel > 0')
    return float(gsd_m)


class OrthoSource:
    """A north-up orthophoto raster read by windows (see the module text). Subclasses set
    ``name``, ``shape``, ``gsd_m``, ``georef`` (and ``path`` for a file) and implement ``_fill``."""
    name: str
    shape: Tuple[int, int]
    gsd_m: float
    georef: Optional[GeoRef]
    path: Optional[Path] = None

    def read_with_coverage(self, row0: int, col0: int, rows: int, cols: int) -> Tuple[np.ndarray, np.ndarray]:
        """(uint8 RGB (rows, cols, 3), bool coverage (rows, cols)) of the window; 0 / False
        outside the raster.

        Raises:
            OrthoSourceError: a window that is not integers in range or has a negative size.
        """
        row0, col0, rows, cols = check_window(self.name, row0, col0, rows, cols)
        rgb = np.zeros((rows, cols, 3), np.uint8)
        cov = np.zeros((rows, cols), bool)
        box = self._clip(row0, col0, rows, cols)
        if box is not None:
            r0, r1, c0, c1 = box
            win = (slice(r0 - row0, r1 - row0), slice(c0 - col0, c1 - col0))
            self._fill(r0, r1, c0, c1, rgb[win], cov[win])
        return rgb, cov

    def read(self, row0: int, col0: int, rows: int, cols: int) -> np.ndarray:
        """uint8 RGB (rows, cols, 3) of the window; 0 outside the raster."""
        return self.read_with_coverage(row0, col0, rows, cols)[0]

    def coverage(self, row0: int, col0: int, rows: int, cols: int) -> np.ndarray:
        """bool (rows, cols): True where the window has image data (see the module text)."""
        return self.read_with_coverage(row0, col0, rows, cols)[1]

    def _clip(self, row0, col0, rows, cols) -> Optional[Tuple[int, int, int, int]]:
        """(r0, r1, c0, c1): the window's part inside the raster, None when there is none."""
        r0, r1 = max(row0, 0), min(row0 + rows, self.shape[0])
        c0, c1 = max(col0, 0), min(col0 + cols, self.shape[1])
        return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None

    def _fill(self, r0, r1, c0, c1, rgb, cov) -> None:
        """Write raster rows r0:r1, cols c0:c1 (inside the raster) into ``rgb`` and ``cov``
        (views of that shape, zero on entry)."""
        raise NotImplementedError

    @cached_property
    def sha256(self) -> str:
        """SHA-256 of the file (computed once, on first use: a large file takes seconds)."""
        return sha256_file(self.path)

    @property
    def size_m(self) -> Tuple[float, float]:
        """(south-north, west-east) extent in metres."""
        return self.shape[0] * self.gsd_m, self.shape[1] * self.gsd_m

    def describe(self) -> str:
        where = ('not geo-referenced' if self.georef is None else
                 f'{self.georef.crs}, top-left corner {self.georef.origin_e:.3f} E {self.georef.origin_n:.3f} N')
        return (f'{self.name}: {self.shape[0]}x{self.shape[1]} px, GSD {self.gsd_m:g} m/px '
                f'({self.size_m[1]:.0f} x {self.size_m[0]:.0f} m), {where}')


def _resolve_georef(path: Path, gsd_m, georef) -> Tuple[float, Optional[GeoRef]]:
    """(gsd_m, georef) of a TIFF: its tags' when geo-referenced (a ``gsd_m`` given must agree
    within 1 %, a ``georef`` given must equal them), else the ones given (``gsd_m`` needed)."""
    tags = read_geotiff(path)
    if tags.georef is None:
        if gsd_m is None:
            raise OrthoSourceError(f'{path}: a TIFF without georeference tags: gsd_m (metres per pixel) is needed')
        return _check_gsd(path, gsd_m), georef
    if georef is not None and georef != tags.georef:
        raise OrthoSourceError(f'{path}: georef={georef} given, but the GeoTIFF tags say {tags.georef}: give none '
                               '(the tags are used)')
    if gsd_m is not None and abs(_check_gsd(path, gsd_m) - tags.gsd_m) > GSD_TAG_TOLERANCE * tags.gsd_m:
        raise OrthoSourceError(f'{path}: gsd_m={gsd_m!r} contradicts the GeoTIFF pixel size {tags.gsd_m:g} m (more '
                               f'than {GSD_TAG_TOLERANCE:.0%} off): omit gsd_m')
    return tags.gsd_m, tags.georef


class _Layout:
    """How a TIFF page's samples lie in its tiles or strips (read once from the tags)."""

    def __init__(self, path: Path, page):
        def refuse(what):
            raise OrthoSourceError(f'{path}: {what}')
        if page.dtype is None:
            refuse(f'SampleFormat={page.sampleformat} BitsPerSample={page.bitspersample}: not a sample type '
                   'tifffile reads; gplq_map takes 8-bit images')
        check_8bit(path, page.dtype)
        if page.bitspersample != 8:
            refuse(f'BitsPerSample={page.bitspersample} (258): gplq_map takes 8-bit samples')
        if page.imagedepth != 1:
            refuse(f'ImageDepth={page.imagedepth} (32997): a volume, not an orthophoto')
        orientation = page.tags.valueof(274, 1)
        if orientation != 1:
            refuse(f'Orientation={orientation} (274): only 1 (rows top to bottom, columns left to right)')
        if page.fillorder != 1:
            refuse(f'FillOrder={page.fillorder} (266): only 1 (most significant bit first); rewrite it: {RECOMPRESS}')
        photometric, spp = int(page.photometric), int(page.samplesperpixel)
        self.compression = int(page.compression)
        jpeg = self.compression in (6, 7, 33007, 34892)
        if photometric == PHOTOMETRIC_GREY:
            base = 1
        elif photometric == PHOTOMETRIC_RGB or (photometric == PHOTOMETRIC_YCBCR and jpeg):
            base = 3
        else:
            refuse(f'Photometric={photometric} (262, {_enum_name(tifffile.PHOTOMETRIC, photometric)}) with '
                   f'Compression={self.compression}: '
                   'the windowed reader takes grey, RGB and JPEG YCbCr (a palette: gdal_translate -expand rgb)')
        if spp < base:
            refuse(f'SamplesPerPixel={spp} (277): Photometric={photometric} needs {base}')
        self.planar = int(page.planarconfig) == 2 and spp > 1
        if self.planar and photometric == PHOTOMETRIC_YCBCR:
            refuse('PlanarConfiguration=2 (284) with YCbCr JPEG: not supported; rewrite it: ' + RECOMPRESS)
        self.height, self.width, self.samples = int(page.imagelength), int(page.imagewidth), spp
        self.colour = tuple(range(base))
        extra = tuple(page.extrasamples or ())
        self.alpha = next((base + i for i, e in enumerate(extra) if int(e) in ALPHA_SAMPLES), None)
        # read_orthophoto's OpenCV (libtiff's RGBA interface) premultiplies colour by an unassociated alpha
        self.premultiply = self.alpha is not None and base == 3 and int(extra[self.alpha - base]) == UNASSOCIATED_ALPHA
        self.nodata = _gdal_nodata(page)
        self.tiled = bool(page.is_tiled)
        self.seg_rows = int(page.tilelength) if self.tiled else min(int(page.rowsperstrip) or self.height, self.height)
        self.seg_cols = int(page.tilewidth) if self.tiled else self.width
        self.down = -(-self.height // self.seg_rows)
        self.across = -(-self.width // self.seg_cols)
        self.contig = 1 if self.planar else spp
        self.offsets = np.asarray(page.dataoffsets, np.int64)
        self.counts = np.asarray(page.databytecounts, np.int64)
        planes = spp if self.planar else 1
        if len(self.offsets) != planes * self.down * self.across or len(self.counts) != len(self.offsets):
            refuse(f'{len(self.offsets)} data offsets / {len(self.counts)} byte counts for {planes} plane(s) of '
                   f'{self.down}x{self.across} {"tiles" if self.tiled else "strips"}: a truncated or corrupt file')
        self.needed_planes = (tuple(sorted(set(self.colour) | ({self.alpha} - {None}))) if self.planar else (0,))
        self.coding_tags = _coding_tags(page, PHOTOMETRIC_GREY if self.planar else photometric, self.contig)

    def segment_rows(self, sr: int) -> int:
        """Rows stored in segment row ``sr`` (tiles are whole; the last strip may be short)."""
        return self.seg_rows if self.tiled else min(self.seg_rows, self.height - sr * self.seg_rows)

    def index(self, plane: int, sr: int, sc: int) -> int:
        return (plane * self.down + sr) * self.across + sc

    def boxes(self, r0, r1, c0, c1) -> Iterator[Tuple[int, int, int, int, int, int]]:
        """(sr, sc, a, b, c, d) for each segment meeting raster rows r0:r1, cols c0:c1, with
        a:b, c:d the rows and columns of the meeting in raster pixels."""
        for sr in range(r0 // self.seg_rows, (r1 - 1) // self.seg_rows + 1):
            top = sr * self.seg_rows
            for sc in range(c0 // self.seg_cols, (c1 - 1) // self.seg_cols + 1):
                left = sc * self.seg_cols
                yield sr, sc, max(r0, top), min(r1, top + self.seg_rows), max(c0, left), min(c1, left + self.seg_cols)


def _enum_name(enum, value) -> str:
    try:
        return enum(value).name
    except ValueError:
        return 'unknown'


def _gdal_nodata(page) -> Optional[int]:
    """GDAL_NODATA (tag 42113, ASCII) as a uint8 value, None when absent or not one."""
    text = page.tags.valueof(GDAL_NODATA)
    try:
        value = float(str(text).strip().rstrip('\x00'))
    except ValueError:
        return None
    return int(value) if value.is_integer() and 0 <= value <= 255 else None


def _coding_tags(page, photometric, contig) -> List[Tuple[int, int, bytes]]:
    """(tag, TIFF type, little-endian values) that a one-segment TIFF needs for libtiff to decode
    a segment as this page codes it; extra samples are marked unspecified, so that libtiff
    returns them as stored (not colour premultiplied by alpha)."""
    def shorts(*v):
        return (3, struct.pack(f'<{len(v)}H', *v))
    tags = [(258, *shorts(*[8] * contig)), (259, *shorts(page.compression)), (262, *shorts(photometric)),
            (277, *shorts(contig)), (284, *shorts(1))]
    if page.predictor != 1:
        tags.append((317, *shorts(page.predictor)))
    n_extra = contig - (1 if photometric == PHOTOMETRIC_GREY else 3)
    if n_extra > 0:                     # ExtraSamples
        tags.append((338, *shorts(*[0] * n_extra)))
    tables = page.tags.valueof(347)
    if tables:
        tags.append((347, 7, bytes(tables)))
    for code in (530, 531):             # YCbCrSubSampling, YCbCrPositioning
        v = page.tags.valueof(code)
        if v is not None:
            tags.append((code, *shorts(*(v if isinstance(v, tuple) else (int(v),)))))
    ref = page.tags.valueof(532)        # ReferenceBlackWhite, RATIONAL
    if ref is not None:
        vals = np.asarray(ref, np.float64).ravel()
        tags.append((532, 5, b''.join(struct.pack('<2I', int(round(v * 1000)), 1000) for v in vals[:6])))
    return tags


def _one_segment_tiff(coding_tags, rows: int, cols: int, data: bytes) -> bytes:
    """A little-endian classic TIFF of one strip, ``data``, of ``rows`` x ``cols`` pixels."""
    entries = [(256, 4, struct.pack('<I', cols)), (257, 4, struct.pack('<I', rows)),
               (278, 4, struct.pack('<I', rows)), (279, 4, struct.pack('<I', len(data))),
               (273, 4, b'\0\0\0\0')] + list(coding_tags)
    entries.sort(key=lambda e: e[0])
    sizes = {3: 2, 4: 4, 5: 8, 7: 1}
    ifd_end = 8 + 2 + 12 * len(entries) + 4
    extra, ifd = b'', [struct.pack('<H', len(entries))]
    strip_at = ifd_end + sum(len(v) + len(v) % 2 for _, _, v in entries if len(v) > 4)
    for tag, typ, value in entries:
        if tag == 273:
            value = struct.pack('<I', strip_at)
        count = len(value) // sizes[typ]
        if len(value) <= 4:
            ifd.append(struct.pack('<HHI', tag, typ, count) + value.ljust(4, b'\0'))
        else:
            ifd.append(struct.pack('<HHII', tag, typ, count, ifd_end + len(extra)))
            extra += value + b'\0' * (len(value) % 2)
    return b'II*\0' + struct.pack('<I', 8) + b''.join(ifd) + b'\0\0\0\0' + extra + data


class TiffSource(OrthoSource):
    """A TIFF or GeoTIFF read window by window (see the module text): tiled or striped, pixel or
    band interleaved, grey, RGB or JPEG YCbCr, with or without alpha, 8-bit; only the first
    image (IFD) is read (overviews are ignored). Georeference and GSD from the GeoTIFF tags; for
    a TIFF without them, ``gsd_m`` is needed and ``georef`` may be given (e.g. from a world file).
    Holds no open file between reads; safe to read from several threads, and picklable.

    Raises:
        FileNotFoundError: no such file.
        GeoTiffError: a georeference a place map cannot take (``geotiff.read_geotiff``).
        OrthoSourceError: a layout, sample type or compression this reader cannot take, or
            ``gsd_m``/``georef`` missing or contradicting the tags.
        ValueError: samples deeper than 8 bits (``geotiff.check_8bit``).
    """

    def __init__(self, path, gsd_m: Optional[float] = None, georef: Optional[GeoRef] = None):
        self.path = Path(path)
        self.name = self.path.name
        self.gsd_m, self.georef = _resolve_georef(self.path, gsd_m, georef)
        try:
            with tifffile.TiffFile(self.path) as tif:
                self._layout = _Layout(self.path, tif.pages.first)
        except (tifffile.TiffFileError, OSError, IndexError, KeyError) as e:
            raise GeoTiffError(f'{self.path}: not a readable TIFF ({e})') from None
        self.shape = (self._layout.height, self._layout.width)
        self._decode = None             # tifffile's decode closure, made on first use (not pickled)
        self.decoder = self._pick_decoder()

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_decode'] = None
        return state

    def _pick_decoder(self) -> str:
        """'raw', 'tifffile' or 'opencv': the first of them that decodes the first segment."""
        lay = self._layout
        if lay.compression == 1:
            return 'raw'
        present = np.flatnonzero(lay.counts > 0)
        order = ('opencv', 'tifffile') if lay.compression in OPENCV_FIRST else ('tifffile', 'opencv')
        if not len(present):
            return order[0]
        index = int(present[0])
        sr = (index // lay.across) % lay.down
        failures = []
        with open(self.path, 'rb', buffering=0) as f:
            data = _pread(f, self.path, int(lay.offsets[index]), int(lay.counts[index]))
        for decoder in order:
            try:
                self._decoded(decoder, data, index, lay.segment_rows(sr))
                return decoder
            except Exception as e:      # the decoders raise many types (ValueError, KeyError, ImportError, cv2.error)
                failures.append(f'{decoder}: {type(e).__name__}: {str(e).strip()[:200]}')
        name = _enum_name(tifffile.COMPRESSION, lay.compression)
        raise OrthoSourceError(f'{self.path}: Compression={lay.compression} (259, {name}): neither tifffile (without '
                               f'imagecodecs) nor OpenCV decodes its tiles/strips ({"; ".join(failures)}); '
                               f're-compress it: {RECOMPRESS}')

    def _decoded(self, decoder: str, data: bytes, index: int, rows: int) -> np.ndarray:
        """A whole segment decoded: uint8 (rows, seg_cols, contig) samples in file order."""
        lay = self._layout
        if decoder == 'tifffile':
            if self._decode is None:
                with tifffile.TiffFile(self.path) as tif:
                    self._decode = tif.pages.first.decode
            arr = self._decode(data, index)[0]
            arr = arr.reshape(arr.shape[-3:])
        else:
            level = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
            try:
                tiff = _one_segment_tiff(lay.coding_tags, rows, lay.seg_cols, data)
                arr = cv2.imdecode(np.frombuffer(tiff, np.uint8), cv2.IMREAD_UNCHANGED)
            finally:
                cv2.utils.logging.setLogLevel(level)
            if arr is None:
                raise OrthoSourceError(f'{self.path}: OpenCV cannot decode segment {index}')
            arr = arr.reshape(arr.shape[:2] + (-1,))
            if arr.shape[2] >= 3:           # BGR(A) -> RGB(A)
                arr = np.concatenate([arr[..., 2::-1], arr[..., 3:]], axis=2)
            arr = arr[..., :lay.contig]
        if arr.dtype != np.uint8 or arr.shape[2] != lay.contig:
            raise OrthoSourceError(f'{self.path}: segment {index} decoded ({decoder}) to {arr.dtype} {arr.shape}, '
                                   f'expected uint8 ({rows}, {lay.seg_cols}, {lay.contig})')
        return arr

    def _segment(self, f, index: int, sr: int, a: int, b: int, c: int, d: int) -> Optional[np.ndarray]:
        """Segment-local rows a:b, cols c:d of segment ``index`` (segment row ``sr``), uint8
        (b - a, d - c, contig); None for a missing segment (sparse file)."""
        lay = self._layout
        offset, count = int(lay.offsets[index]), int(lay.counts[index])
        if count == 0:
            return None
        if self.decoder != 'raw':
            data = _pread(f, self.path, offset, count)
            try:
                block = self._decoded(self.decoder, data, index, lay.segment_rows(sr))
            except OrthoSourceError:
                raise
            except Exception as e:      # the decoders raise many types (zlib.error, LZMAError, cv2.error, ...)
                raise OrthoSourceError(f'{self.path}: {"tile" if lay.tiled else "strip"} {index} ({count} bytes at '
                                       f'{offset}) does not decode ({self.decoder}: {type(e).__name__}: {e}): a '
                                       'corrupt file') from e
            if block.shape[0] < b or block.shape[1] < d:
                raise OrthoSourceError(f'{self.path}: segment {index} decoded ({self.decoder}) to {block.shape[:2]} '
                                       f'px, rows up to {b} and columns up to {d} needed: a corrupt file')
            return block[a:b, c:d]
        row_bytes = lay.seg_cols * lay.contig
        if b * row_bytes > count:
            raise OrthoSourceError(f'{self.path}: segment {index} holds {count} bytes, rows up to {b} need '
                                   f'{b * row_bytes}: a truncated or corrupt file')
        width = (d - c) * lay.contig
        if (b - a) * row_bytes <= 2 * (b - a) * width + RAW_SPAN_SLACK:     # whole rows, one read
            buf = _pread(f, self.path, offset + a * row_bytes, (b - a) * row_bytes)
            return np.frombuffer(buf, np.uint8).reshape(b - a, lay.seg_cols, lay.contig)[:, c:d]
        out = np.empty((b - a, d - c, lay.contig), np.uint8)                 # a narrow window of wide rows
        for i in range(b - a):
            buf = _pread(f, self.path, offset + (a + i) * row_bytes + c * lay.contig, width)
            out[i] = np.frombuffer(buf, np.uint8).reshape(d - c, lay.contig)
        return out

    def _fill(self, r0, r1, c0, c1, rgb, cov):
        lay = self._layout
        samples = np.zeros((r1 - r0, c1 - c0, lay.samples), np.uint8)
        with open(self.path, 'rb', buffering=0) as f:
            for sr, sc, a, b, c, d in lay.boxes(r0, r1, c0, c1):
                top, left = sr * lay.seg_rows, sc * lay.seg_cols
                for plane in lay.needed_planes:
                    block = self._segment(f, lay.index(plane, sr, sc), sr, a - top, b - top, c - left, d - left)
                    if block is None:
                        continue
                    samples[a - r0:b - r0, c - c0:d - c0, plane:plane + lay.contig] = block
                    cov[a - r0:b - r0, c - c0:d - c0] = True
        colour = samples[..., list(lay.colour)]
        if lay.premultiply:
            colour = ((colour.astype(np.uint16) * samples[..., lay.alpha:lay.alpha + 1] + 127) // 255).astype(np.uint8)
        rgb[...] = colour if colour.shape[-1] == 3 else colour[..., :1]
        if lay.alpha is not None:
            cov &= samples[..., lay.alpha] > 0
        if lay.nodata is not None:
            cov &= ~np.all(colour == lay.nodata, axis=-1)

    def coverage(self, row0: int, col0: int, rows: int, cols: int) -> np.ndarray:
        lay = self._layout
        if lay.alpha is not None or lay.nodata is not None:
            return self.read_with_coverage(row0, col0, rows, cols)[1]
        row0, col0, rows, cols = check_window(self.name, row0, col0, rows, cols)
        cov = np.zeros((rows, cols), bool)
        box = self._clip(row0, col0, rows, cols)
        if box is not None:                 # no decoding: the segments present
            for sr, sc, a, b, c, d in lay.boxes(*box):
                if all(lay.counts[lay.index(p, sr, sc)] > 0 for p in lay.needed_planes):
                    cov[a - row0:b - row0, c - col0:d - col0] = True
        return cov


def _pread(f, path, offset: int, count: int) -> bytes:
    f.seek(offset)
    data = f.read(count)
    if len(data) != count:
        raise OrthoSourceError(f'{path}: {count} bytes at offset {offset} asked, {len(data)} read: a truncated file')
    return data


class ImageSource(OrthoSource):
    """A PNG or JPEG (any file OpenCV reads) with the given GSD and optional georeference.
    **Decoded whole, once, at construction**: OpenCV cannot decode a window of a PNG or JPEG,
    so this source holds rows x cols x 3 bytes for its lifetime; orthophotos larger than memory
    must be TIFFs (``TiffSource``; ``write_tiled_geotiff`` converts one). Pixels are
    ``geotiff.read_orthophoto``'s; coverage is the raster's rectangle."""

    def __init__(self, path, gsd_m: float, georef: Optional[GeoRef] = None):
        self.path = Path(path)
        self.name = self.path.name
        self.gsd_m = _check_gsd(self.path, gsd_m)
        self.georef = georef
        self._rgb = read_orthophoto(self.path)
        self.shape = self._rgb.shape[:2]

    def _fill(self, r0, r1, c0, c1, rgb, cov):
        rgb[...] = self._rgb[r0:r1, c0:c1]
        cov[...] = True


class Mosaic(OrthoSource):
    """Geo-referenced sources in one frame: its origin (``georef``) is the top-left corner of the
    bounding box of their union, and source ``i`` lies at rows/cols ``placements[i]`` of it.

    All sources must be geo-referenced, in one UTM zone and hemisphere, with GSDs within 0.1 % of
    the first's (the mosaic's ``gsd_m``). Each source is placed at the whole pixel nearest its
    georeference on the first source's pixel grid (at most half a pixel off when the grids are
    not aligned; none when they are, as tiles of one orthophoto are). Where sources overlap,
    **the earlier source in ``sources`` wins** wherever it has data (``coverage``); a later one
    shows only where no earlier one covers (e.g. in an earlier one's transparent or nodata
    pixels). Pixels covered by no source are 0 and not covered. One source is a valid mosaic.

    Raises:
        MosaicError: no sources, a source without georeference, another UTM zone or hemisphere,
            a GSD more than 0.1 % off (the message names the source and the values).
    """

    def __init__(self, sources: Sequence[OrthoSource], name: Optional[str] = None):
        self.sources = tuple(sources)
        if not self.sources:
            raise MosaicError('Mosaic: no sources')
        for s in self.sources:
            if s.georef is None:
                raise MosaicError(f'{_label(s)}: no georeference (a GeoTIFF without GeoTIFF tags, or a PNG/JPEG '
                                  'without georef): a mosaic places its sources by their georeference')
        ref = self.sources[0]
        for s in self.sources[1:]:
            if (s.georef.zone, s.georef.north) != (ref.georef.zone, ref.georef.north):
                raise MosaicError(f'{_label(s)}: {s.georef.crs} (UTM zone {s.georef.zone}'
                                  f'{"N" if s.georef.north else "S"}), but {_label(ref)} is {ref.georef.crs}: a '
                                  f'mosaic is in one UTM zone (reproject it: gdalwarp -t_srs {ref.georef.crs})')
            if abs(s.gsd_m / ref.gsd_m - 1) > MOSAIC_GSD_TOLERANCE:
                raise MosaicError(f'{_label(s)}: gsd_m={s.gsd_m!r} m/px, but {_label(ref)} has {ref.gsd_m!r} '
                                  f'({abs(s.gsd_m / ref.gsd_m - 1):.2%} off, more than {MOSAIC_GSD_TOLERANCE:.1%}): '
                                  f'resample it (gdalwarp -tr {ref.gsd_m:g} {ref.gsd_m:g})')
        self.gsd_m = ref.gsd_m
        e0, n0 = ref.georef.origin_e, ref.georef.origin_n
        at = [(round((n0 - s.georef.origin_n) / self.gsd_m), round((s.georef.origin_e - e0) / self.gsd_m))
              for s in self.sources]
        top, left = min(r for r, _ in at), min(c for _, c in at)
        self.placements = tuple((r - top, c - left) for r, c in at)
        self.shape = (max(r + s.shape[0] for (r, _), s in zip(self.placements, self.sources)),
                      max(c + s.shape[1] for (_, c), s in zip(self.placements, self.sources)))
        self.georef = GeoRef(ref.georef.zone, ref.georef.north, e0 + left * self.gsd_m, n0 - top * self.gsd_m)
        names = [s.name for s in self.sources]
        self.name = name or ('+'.join(names) if len(names) <= 3 else f'{names[0]}+{len(names) - 1} more')

    @cached_property
    def sha256(self) -> str:
        """SHA-256 of the sources' SHA-256s and placements, in order: the mosaic's identity."""
        text = ''.join(f'{s.sha256} {r} {c}\n' for s, (r, c) in zip(self.sources, self.placements))
        return hashlib.sha256(text.encode()).hexdigest()

    def _parts(self, r0, r1, c0, c1) -> Iterator[Tuple[OrthoSource, Tuple[int, int, int, int], Tuple[slice, slice]]]:
        """(source, its window (row0, col0, rows, cols), where it lands in the r0:r1, c0:c1 block)."""
        for s, (top, left) in zip(self.sources, self.placements):
            a, b = max(r0, top), min(r1, top + s.shape[0])
            c, d = max(c0, left), min(c1, left + s.shape[1])
            if a < b and c < d:
                yield s, (a - top, c - left, b - a, d - c), (slice(a - r0, b - r0), slice(c - c0, d - c0))

    def _fill(self, r0, r1, c0, c1, rgb, cov):
        for s, window, at in self._parts(r0, r1, c0, c1):
            have = cov[at]
            if have.all():
                continue
            part, part_cov = s.read_with_coverage(*window)
            take = part_cov & ~have
            rgb[at][take] = part[take]
            have |= part_cov

    def coverage(self, row0: int, col0: int, rows: int, cols: int) -> np.ndarray:
        row0, col0, rows, cols = check_window(self.name, row0, col0, rows, cols)
        cov = np.zeros((rows, cols), bool)
        box = self._clip(row0, col0, rows, cols)
        if box is not None:
            r0, r1, c0, c1 = box
            block = cov[r0 - row0:r1 - row0, c0 - col0:c1 - col0]
            for s, window, at in self._parts(r0, r1, c0, c1):
                block[at] |= s.coverage(*window)
        return cov


def open_source(path, gsd_m: Optional[float] = None, georef: Optional[GeoRef] = None) -> OrthoSource:
    """``TiffSource`` for a .tif/.tiff (GSD and georeference from its tags when it has them),
    else ``ImageSource`` (``gsd_m`` needed)."""
    path = Path(path)
    if is_tiff(path):
        return TiffSource(path, gsd_m, georef)
    if gsd_m is None:
        raise OrthoSourceError(f'{path}: gsd_m (metres per pixel) is needed: not a GeoTIFF')
    return ImageSource(path, gsd_m, georef)


def _geotiff_tags(gsd_m: float, georef: GeoRef):
    """tifffile extratags of a north-up WGS 84 / UTM GeoTIFF (PixelIsArea, metres), as GDAL
    writes them: ModelPixelScaleTag, one ModelTiepointTag at raster (0, 0), GeoKeyDirectoryTag."""
    epsg = (32600 if georef.north else 32700) + georef.zone
    citation = f'WGS 84 / UTM zone {georef.zone}{"N" if georef.north else "S"}|'
    keys = [(1024, 0, 1, 1), (1025, 0, 1, 1), (1026, 34737, len(citation), 0), (3072, 0, 1, epsg),
            (3076, 0, 1, 9001)]
    directory = (1, 1, 0, len(keys)) + tuple(v for k in keys for v in k)
    return [(33550, 'd', 3, (gsd_m, gsd_m, 0.0), False),
            (33922, 'd', 6, (0.0, 0.0, 0.0, georef.origin_e, georef.origin_n, 0.0), False),
            (34735, 'H', len(directory), directory, False),
            (34737, 's', 0, citation, False)]


def write_tiled_geotiff(path, rgb: np.ndarray, gsd_m: float, georef: GeoRef, tile: int = 256,
                        compression=None) -> Path:
    """Write ``rgb`` (uint8 (H, W, 3), RGBA (H, W, 4) with unassociated alpha, or grey (H, W); a
    numpy memmap is fine) as a tiled GeoTIFF
    that ``geotiff.read_geotiff`` and ``TiffSource`` read back with this GSD and georeference
    (WGS 84 / UTM, EPSG 326zz/327zz, PixelIsArea: ``georef`` is the top-left pixel corner).

    Args:
        tile: tile width and height in pixels, a multiple of 16 (TIFF).
        compression: tifffile's: None, 'zlib' (Deflate), 'lzma', 'packbits', ... (LZW and JPEG
            need the imagecodecs package to write).
    Returns:
        ``path`` (BigTIFF when the pixels exceed ~4 GB, as tifffile decides).
    """
    path = Path(path)
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and (
            rgb.ndim == 2 or rgb.ndim == 3 and rgb.shape[2] in (3, 4))):
        raise OrthoSourceError(f'{path}: rgb {getattr(rgb, "dtype", type(rgb))} {getattr(rgb, "shape", "")}: '
                               'expected a uint8 (H, W, 3), (H, W, 4) or (H, W) array')
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 16 or tile % 16:
        raise OrthoSourceError(f'{path}: tile={tile!r}: must be a multiple of 16 pixels (TIFF)')
    if not isinstance(georef, GeoRef):
        raise OrthoSourceError(f'{path}: georef={georef!r}: a geo.GeoRef is needed')
    tifffile.imwrite(path, rgb, photometric='rgb' if rgb.ndim == 3 else 'minisblack', tile=(tile, tile),
                     extrasamples=['unassalpha'] if rgb.ndim == 3 and rgb.shape[2] == 4 else None,
                     compression=compression, metadata=None, extratags=_geotiff_tags(_check_gsd(path, gsd_m), georef))
    return path


def _variant(rgb: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the image's 8 rotations/flips (k = 0: as is)."""
    out = np.rot90(rgb, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if (k // 4) % 2 else out)


def mosaic_test_area(images, out_dir, gsd_m: float, zone: int, north: bool = True,
                     origin: Tuple[float, float] = (500_000.0, 5_000_000.0), repeat: int = 1,
                     row_width_m: Optional[float] = None, tile: int = 256, compression=None) -> List[Path]:
    """A large test area for build benchmarks: the ``images`` (paths read with
    ``geotiff.read_orthophoto``, or uint8 arrays), each written as a tiled GeoTIFF
    (``write_tiled_geotiff``), laid edge to edge in one UTM zone; ``Mosaic`` of
    ``[TiffSource(p) for p in paths]`` is the area.

    **The layout is synthetic**: the images are not geographic neighbours (e.g. the NEON tiles
    of ``paths.default_images_dir()``, 0.1 m/px, come from sites across the US); they are only given
    coordinates next to each other. It is for measuring map building over many tiles and
    files (throughput, memory, shard bookkeeping), not localization accuracy.

    Layout: ``repeat`` rounds of all images, round k using each image's k-th rotation/flip (so
    no two files hold the same pixels for up to 8 rounds); images go left to right, edges
    touching, in rows at most ``row_width_m`` wide (None: one row), a row below the previous
    one's tallest image. Pixels next to a shorter image in a row are not covered by any file.
    ``origin``: UTM (easting, northing) of the area's top-left corner.

    Returns:
        the GeoTIFF paths, in placement order (``out_dir/area_NNN_<stem>_rK.tif``).
    Raises:
        FileExistsError: one of the files exists already (nothing is overwritten).
    """
    out_dir = Path(out_dir)
    gsd_m = _check_gsd('mosaic_test_area', gsd_m)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise OrthoSourceError(f'mosaic_test_area: repeat={repeat!r}: must be an integer >= 1')
    items = [(f'img{i}', im) if isinstance(im, np.ndarray) else (Path(im).stem, Path(im))
             for i, im in enumerate(images)]
    if not items:
        raise OrthoSourceError('mosaic_test_area: no images')
    limit = None if row_width_m is None else row_width_m / gsd_m
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, x, y, row_h, n = [], 0, 0, 0, 0
    for k in range(repeat):
        for stem, im in items:
            rgb = _variant(im if isinstance(im, np.ndarray) else read_orthophoto(im), k)
            h, w = rgb.shape[:2]
            if limit is not None and x > 0 and x + w > limit:
                x, y, row_h = 0, y + row_h, 0
            path = out_dir / f'area_{n:03d}_{stem}_r{k}.tif'
            if path.exists():
                raise FileExistsError(f'{path} exists: mosaic_test_area does not overwrite (give an empty out_dir)')
            georef = GeoRef(zone, north, origin[0] + x * gsd_m, origin[1] - y * gsd_m)
            paths.append(write_tiled_geotiff(path, rgb, gsd_m, georef, tile=tile, compression=compression))
            x, row_h, n = x + w, max(row_h, h), n + 1
    return paths
