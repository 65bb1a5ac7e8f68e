"""Orthophoto sources for shard-by-shard map building (issue #20, "large orthophotos",
``onboard.orthosource``): window reads of TIFFs equal slices of ``geotiff.read_orthophoto``
for every layout and compression the reader takes, only the tiles/strips a window meets are
read (checked on real files: the others corrupted, the bytes the process reads counted),
coverage, mosaics of several GeoTIFFs and their refusals, the GeoTIFF georeference against the
world-file one, and the tiled GeoTIFF writer and synthetic test area for benchmarks. Files are
written here with tifffile, OpenCV, or (tiled YCbCr JPEG, which neither writes without
imagecodecs) by hand."""
import os
import pickle
import struct
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from gplq_ros.onboard.fileformat import sha256_file
from gplq_ros.onboard.geo import GeoRef, read_world_file
from gplq_ros.onboard.geotiff import read_geotiff, read_orthophoto
from gplq_ros.onboard.orthosource import (ImageSource, Mosaic, MosaicError, OrthoSourceError, TiffSource,
                                          mosaic_test_area, open_source, write_tiled_geotiff)
from gplq_ros.onboard.paths import default_images_dir

H, W = 301, 517                                    # not multiples of any tile or strip size
GSD = 0.25
REF = GeoRef(33, True, 512_345.5, 4_100_678.25)   # top-left pixel corner, UTM 33N
NEON = sorted(default_images_dir().glob('*.png'))


def rgb_image(h=H, w=W, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def rchar() -> int:
    """Bytes this process has passed through read()/pread() so far (Linux)."""
    for line in Path('/proc/self/io').read_text().splitlines():
        if line.startswith('rchar:'):
            return int(line.split()[1])
    raise RuntimeError('/proc/self/io has no rchar')


def write_jpeg_ycbcr_tiff(path: Path, rgb: np.ndarray, tile=64) -> Path:
    """A tiled JPEG TIFF in YCbCr 4:2:0, the layout of GDAL's COMPRESS=JPEG PHOTOMETRIC=YCBCR
    (large orthophotos are often delivered so), assembled with struct: each tile a JFIF stream
    from OpenCV (4:2:0 by default)."""
    h, w = rgb.shape[:2]
    tiles = []
    for r in range(0, h, tile):
        for c in range(0, w, tile):
            block = np.zeros((tile, tile, 3), np.uint8)
            part = rgb[r:r + tile, c:c + tile]
            block[:part.shape[0], :part.shape[1]] = part
            tiles.append(cv2.imencode('.jpg', np.ascontiguousarray(block[..., ::-1]))[1].tobytes())
    n = len(tiles)
    entries = [(256, 4, [w]), (257, 4, [h]), (258, 3, [8, 8, 8]), (259, 3, [7]), (262, 3, [6]), (277, 3, [3]),
               (284, 3, [1]), (322, 3, [tile]), (323, 3, [tile]), (324, 4, [0] * n), (325, 4, [len(t) for t in tiles]),
               (530, 3, [2, 2])]
    ifd_end = 8 + 2 + 12 * len(entries) + 4
    extra, ifd = b'', struct.pack('<H', len(entries))
    data_at = ifd_end + sum(len(v) * (2 if t == 3 else 4) for _, t, v in entries if len(v) * (2 if t == 3 else 4) > 4)
    offsets, at = [], data_at
    for t in tiles:
        offsets.append(at)
        at += len(t)
    for tag, typ, values in entries:
        values = offsets if tag == 324 else values
        raw = struct.pack(f'<{len(values)}{"H" if typ == 3 else "I"}', *values)
        if len(raw) <= 4:
            ifd += struct.pack('<HHI', tag, typ, len(values)) + raw.ljust(4, b'\0')
        else:
            ifd += struct.pack('<HHII', tag, typ, len(values), ifd_end + len(extra))
            extra += raw
    path.write_bytes(b'II*\0' + struct.pack('<I', 8) + ifd + b'\0\0\0\0' + extra + b''.join(tiles))
    return path


def write_kind(path: Path, kind: str) -> Path:
    """One orthophoto of H x W pixels in the layout ``kind``."""
    rgb = rgb_image()
    smooth = cv2.resize(rgb_image(12, 20, seed=1), (W, H))            # JPEG: lossy, compare smooth pixels
    if kind in ('tiled_none', 'tiled_deflate', 'tiled_lzma'):
        comp = {'none': None, 'deflate': 'zlib', 'lzma': 'lzma'}[kind[6:]]
        return write_tiled_geotiff(path, rgb, GSD, REF, tile=64, compression=comp)
    if kind == 'tiled_deflate_predictor_bigtiff':
        tifffile.imwrite(path, rgb, tile=(48, 80), compression='zlib', predictor=True, bigtiff=True, metadata=None)
    elif kind == 'striped_none_one_strip':
        tifffile.imwrite(path, rgb, metadata=None)                          # tifffile's default: one strip
    elif kind == 'striped_deflate':
        tifffile.imwrite(path, rgb, compression='zlib', rowsperstrip=37, metadata=None)
    elif kind == 'planar_tiled_deflate':
        tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), photometric='rgb', planarconfig='separate', tile=(32, 48),
                         compression='zlib', metadata=None)
    elif kind == 'grey_tiled':
        tifffile.imwrite(path, rgb[..., 0], tile=(32, 32), metadata=None)
    elif kind == 'grey_striped_lzma':
        tifffile.imwrite(path, rgb[..., 0], compression='lzma', rowsperstrip=50, metadata=None)
    elif kind == 'rgba_unassociated_tiled':
        rgba = np.concatenate([rgb, rgb_image(seed=2)[..., :1]], axis=-1)
        tifffile.imwrite(path, rgba, photometric='rgb', extrasamples=['unassalpha'], tile=(64, 64),
                         compression='zlib', metadata=None)
    elif kind == 'lzw_predictor_opencv':                                   # OpenCV's TIFF: LZW, predictor 2, strips
        cv2.imwrite(str(path), rgb[..., ::-1])
    elif kind == 'packbits_opencv':
        cv2.imwrite(str(path), rgb[..., ::-1], [cv2.IMWRITE_TIFF_COMPRESSION, cv2.IMWRITE_TIFF_COMPRESSION_PACKBITS])
    elif kind == 'jpeg_rgb_strips_opencv':                                # JPEGTables in the IFD
        cv2.imwrite(str(path), smooth[..., ::-1], [cv2.IMWRITE_TIFF_COMPRESSION, cv2.IMWRITE_TIFF_COMPRESSION_JPEG,
                                                   cv2.IMWRITE_TIFF_ROWSPERSTRIP, 16])
    elif kind == 'jpeg_ycbcr_tiled':
        write_jpeg_ycbcr_tiff(path, smooth)
    return path


KINDS = {'tiled_none': 'raw', 'tiled_deflate': 'tifffile', 'tiled_lzma': 'tifffile',
         'tiled_deflate_predictor_bigtiff': 'tifffile', 'striped_none_one_strip': 'raw', 'striped_deflate': 'tifffile',
         'planar_tiled_deflate': 'tifffile', 'grey_tiled': 'raw', 'grey_striped_lzma': 'tifffile',
         'rgba_unassociated_tiled': 'tifffile', 'lzw_predictor_opencv': 'opencv', 'packbits_opencv': 'opencv',
         'jpeg_rgb_strips_opencv': 'opencv', 'jpeg_ycbcr_tiled': 'opencv'}
WINDOWS = [(0, 0, H, W), (-13, -29, 70, 90), (H - 40, W - 50, 100, 120), (17, 33, 111, 222), (H + 5, 0, 8, 8),
           (-200, -300, 1000, 1500), (5, 5, 0, 7), (64, 64, 64, 64)]


def expected(full: np.ndarray, row0, col0, rows, cols) -> np.ndarray:
    out = np.zeros((rows, cols, 3), np.uint8)
    r0, r1, c0, c1 = max(row0, 0), min(row0 + rows, full.shape[0]), max(col0, 0), min(col0 + cols, full.shape[1])
    if r0 < r1 and c0 < c1:
        out[r0 - row0:r1 - row0, c0 - col0:c1 - col0] = full[r0:r1, c0:c1]
    return out


@pytest.fixture(scope='module')
def kinds(tmp_path_factory):
    d = tmp_path_factory.mktemp('kinds')
    return {k: write_kind(d / f'{k}.tif', k) for k in KINDS}


@pytest.mark.parametrize('kind', list(KINDS))
def test_window_reads_equal_read_orthophoto(kinds, kind):
    """Every window (inside, across each edge, outside, empty, whole) of every layout equals the
    same slice of read_orthophoto (the whole-image reader), zero-padded outside; coverage is
    the raster's rectangle (alpha > 0 for RGBA); the decoder is the expected one."""
    path = kinds[kind]
    src = TiffSource(path, gsd_m=GSD)
    full = read_orthophoto(path)
    assert src.shape == full.shape[:2] == (H, W) and src.decoder == KINDS[kind]
    for w in WINDOWS:
        rgb, cov = src.read_with_coverage(*w)
        assert rgb.dtype == np.uint8 and rgb.shape == (w[2], w[3], 3)
        np.testing.assert_array_equal(rgb, expected(full, *w), err_msg=f'{kind} window {w}')
        inside = expected(np.ones((H, W, 3), np.uint8), *w)[..., 0] > 0
        if kind.startswith('rgba'):
            alpha = tifffile.imread(path)[..., 3:].repeat(3, -1)
            inside &= expected(alpha, *w)[..., 0] > 0
        np.testing.assert_array_equal(cov, inside)
        np.testing.assert_array_equal(src.coverage(*w), inside)


def test_geotiff_source_fields(tmp_path):
    """A GeoTIFF's GSD and georeference come from its tags; sha256 is the file's; a plain TIFF
    needs gsd_m; a gsd_m or georef contradicting the tags is refused; the source pickles (for
    worker processes) and reads the same after."""
    path = write_tiled_geotiff(tmp_path / 'geo.tif', rgb_image(), GSD, REF, tile=64, compression='zlib')
    src = TiffSource(path)
    assert (src.gsd_m, src.georef, src.name, src.shape) == (GSD, REF, 'geo.tif', (H, W))
    assert src.sha256 == sha256_file(path)
    assert TiffSource(path, gsd_m=GSD * 1.005).gsd_m == GSD                    # within 1 %: the tags' is used
    with pytest.raises(OrthoSourceError, match=r'geo.tif: gsd_m=0.3 contradicts the GeoTIFF pixel size 0.25'):
        TiffSource(path, gsd_m=0.3)
    with pytest.raises(OrthoSourceError, match=r'geo.tif: georef=.* given, but the GeoTIFF tags say'):
        TiffSource(path, georef=GeoRef(33, True, 500_000.0, 4_000_000.0))
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone.read(10, 20, 30, 40), src.read(10, 20, 30, 40))
    plain = tmp_path / 'plain.tif'
    tifffile.imwrite(plain, rgb_image(), metadata=None)
    with pytest.raises(OrthoSourceError, match=r'plain.tif: a TIFF without georeference tags: gsd_m'):
        TiffSource(plain)
    assert TiffSource(plain, gsd_m=0.1).georef is None


def test_tiff_refusals(tmp_path):
    """16-bit samples (read_orthophoto's message), a palette and a compression neither decoder
    takes are refused with the file and the tag/value named."""
    deep = tmp_path / 'deep.tif'
    tifffile.imwrite(deep, (rgb_image().astype(np.uint16) * 8), metadata=None)
    with pytest.raises(ValueError, match=r'deep.tif: uint16 samples; gplq_map takes 8-bit'):
        TiffSource(deep, gsd_m=GSD)
    palette = tmp_path / 'palette.tif'
    tifffile.imwrite(palette, rgb_image()[..., 0], photometric='palette',
                     colormap=np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1)), metadata=None)
    with pytest.raises(OrthoSourceError, match=r'palette.tif: Photometric=3 \(262, PALETTE\)'):
        TiffSource(palette, gsd_m=GSD)
    odd = tmp_path / 'odd.tif'                          # a compression no decoder here has: 34887 LERC
    tifffile.imwrite(odd, rgb_image(), metadata=None, tile=(64, 64))
    with tifffile.TiffFile(odd, mode='r+b') as tif:
        tif.pages.first.tags[259].overwrite(34887)
    with pytest.raises(OrthoSourceError, match=r'odd.tif: Compression=34887 \(259, LERC\): neither tifffile'):
        TiffSource(odd, gsd_m=GSD)


def test_window_errors(kinds):
    """A window of non-integers, out of int range or of negative size is refused naming the
    source, the field and its value; numpy integers are taken."""
    src = TiffSource(kinds['tiled_deflate'])
    for window, field in (((1.0, 0, 5, 5), 'row0=1.0'), ((0, True, 5, 5), 'col0=True'), ((0, 0, -1, 5), 'rows=-1'),
                          ((0, 0, 5, -3), 'cols=-3'), ((2 ** 31, 0, 5, 5), 'row0=2147483648'),
                          ((0, -2 ** 40, 5, 5), 'col0=-1099511627776'), ((0, 0, '5', 5), "rows='5'")):
        with pytest.raises(OrthoSourceError, match=f'tiled_deflate.tif: window {field}'):
            src.read(*window)
        with pytest.raises(OrthoSourceError, match=f'window {field}'):
            src.coverage(*window)
    assert src.read(np.int64(3), np.int32(4), np.uint16(5), 6).shape == (5, 6, 3)


def test_window_read_decodes_only_the_segments_it_meets(tmp_path):
    """All the tiles of a deflate GeoTIFF that a window does not meet are overwritten with
    garbage: the window still reads exactly, and a window meeting a garbage tile fails naming
    the file and the tile. So nothing outside the window's tiles is decoded."""
    rgb = rgb_image(1024, 1024)
    path = write_tiled_geotiff(tmp_path / 'big.tif', rgb, GSD, REF, tile=128, compression='zlib')
    window = (100, 50, 200, 150)                        # tile rows 0..2, tile cols 0..1
    with tifffile.TiffFile(path) as tif:
        offsets, counts = tif.pages.first.dataoffsets, tif.pages.first.databytecounts
    with open(path, 'r+b') as f:
        for i, (off, n) in enumerate(zip(offsets, counts)):
            if not (i // 8 <= 2 and i % 8 <= 1):
                f.seek(off)
                f.write(b'\xff' * n)
    src = TiffSource(path)
    np.testing.assert_array_equal(src.read(*window), expected(rgb, *window))
    with pytest.raises(OrthoSourceError, match=r'big.tif: tile 2 \(.* bytes at .*\) does not decode \(tifffile'):
        src.read(0, 0, 10, 300)


@pytest.mark.skipif(not Path('/proc/self/io').is_file(), reason='counts bytes read with /proc/self/io (Linux)')
@pytest.mark.parametrize('layout', ['one_strip', 'tiled', 'tiled_deflate'])
def test_window_read_reads_the_window_bytes_not_the_file(tmp_path, layout):
    """A 256 x 256 window of a 2304 x 2304 RGB file (15.9 MB of pixels): the bytes the process
    reads are those of the tiles it meets (uncompressed: of the window's rows and columns only,
    even in a single-strip file), and the memory it allocates is about the window's."""
    rgb = rgb_image(2304, 2304)
    path = tmp_path / f'{layout}.tif'
    if layout == 'one_strip':
        tifffile.imwrite(path, rgb, metadata=None)
    else:
        write_tiled_geotiff(path, rgb, GSD, REF, tile=256, compression='zlib' if layout == 'tiled_deflate' else None)
    src = TiffSource(path, gsd_m=GSD)
    src.read(0, 0, 8, 8)                                # first-use costs (tifffile's decoder) outside the count
    window = (1000, 1100, 256, 256)                     # meets 2 x 2 tiles of 256
    before = rchar()
    tracemalloc.start()
    out = src.read(*window)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    read = rchar() - before
    np.testing.assert_array_equal(out, rgb[1000:1256, 1100:1356])
    window_bytes = 256 * 256 * 3
    slack = 4096                                        # reading /proc/self/io itself, tile headers
    assert read <= (4 * 256 * 256 * 3 * 1.01 if layout.startswith('tiled') else window_bytes) + slack, (layout, read)
    assert read < 0.05 * path.stat().st_size           # 2 x 2 of the 9 x 9 tiles: 4.9 % of the pixels
    assert peak < 12 * window_bytes, (layout, peak)     # window, samples, one decoded tile: not the 15.9 MB


def test_coverage_of_sparse_tiles_and_nodata(tmp_path):
    """A tile with byte count 0 (GDAL's sparse files) reads 0 and is not covered, without any
    decoding for coverage(); GDAL_NODATA marks pixels whose bands all equal it as not covered."""
    rgb = rgb_image(256, 256)
    rgb[:10, :10] = 0
    path = tmp_path / 'sparse.tif'
    tifffile.imwrite(path, rgb, tile=(128, 128), compression='zlib', metadata=None,
                     extratags=[(42113, 's', 0, '0', False)])
    with tifffile.TiffFile(path, mode='r+b') as tif:
        tif.pages.first.tags[325].overwrite(tuple(tif.pages.first.databytecounts[:3]) + (0,))
    src = TiffSource(path, gsd_m=GSD)
    rgb_out, cov = src.read_with_coverage(0, 0, 256, 256)
    want = np.ones((256, 256), bool)
    want[128:, 128:] = False
    want[:10, :10] = False
    np.testing.assert_array_equal(cov, want)
    assert not rgb_out[128:, 128:].any()
    np.testing.assert_array_equal(rgb_out[:128], rgb[:128])
    plain = tmp_path / 'sparse_no_nodata.tif'
    tifffile.imwrite(plain, rgb, tile=(128, 128), metadata=None)
    with tifffile.TiffFile(plain, mode='r+b') as tif:
        tif.pages.first.tags[325].overwrite(tuple(tif.pages.first.databytecounts[:3]) + (0,))
    want[:10, :10] = True
    np.testing.assert_array_equal(TiffSource(plain, gsd_m=GSD).coverage(-5, 0, 266, 256)[5:261], want)


def test_geotiff_georef_equals_the_world_file_one(tmp_path):
    """The same pixels as a tiled GeoTIFF (write_tiled_geotiff) and as a plain TIFF with a .tfw:
    TiffSource's georef from the tags equals GeoRef(zone, north, *read_world_file(...)), as
    gplq_map builds it from --world-file and --utm-zone; also in the southern hemisphere and
    at 0.1 m (not a binary fraction); the pixels are the same."""
    rgb = rgb_image()
    for gsd, ref in ((GSD, REF), (0.1, GeoRef(18, False, 654_321.3, 6_543_210.7))):
        geo = write_tiled_geotiff(tmp_path / f'geo_{gsd}.tif', rgb, gsd, ref, tile=128, compression='zlib')
        plain = tmp_path / f'plain_{gsd}.tif'
        tifffile.imwrite(plain, rgb, metadata=None)
        tfw = plain.with_suffix('.tfw')                  # pixel size, rotations, centre of the top-left pixel
        tfw.write_text(f'{gsd!r}\n0\n0\n{-gsd!r}\n{ref.origin_e + gsd / 2!r}\n{ref.origin_n - gsd / 2!r}\n')
        from_world = GeoRef(ref.zone, ref.north, *read_world_file(tfw, gsd))
        tagged = TiffSource(geo)
        assert tagged.georef.zone == from_world.zone and tagged.georef.north == from_world.north
        # 0.1 is not a binary fraction: the two paths round e +- gsd / 2 differently (ulp ~1e-9 m here)
        assert tagged.georef.origin_e == pytest.approx(from_world.origin_e, abs=1e-6)
        assert tagged.georef.origin_n == pytest.approx(from_world.origin_n, abs=1e-6)
        if gsd == GSD:                                   # binary fractions: exactly equal
            assert tagged.georef == from_world
        assert tagged.gsd_m == gsd and read_geotiff(geo).georef == tagged.georef
        with_world = TiffSource(plain, gsd_m=gsd, georef=from_world)
        np.testing.assert_array_equal(with_world.read(0, 0, H, W), tagged.read(0, 0, H, W))
        assert tagged.georef.crs == ('EPSG:32633' if ref.north else 'EPSG:32718')


def geo_source(tmp_path, name, rgb, e, n, gsd=GSD, zone=33, north=True, **kw) -> TiffSource:
    return TiffSource(write_tiled_geotiff(tmp_path / name, rgb, gsd, GeoRef(zone, north, e, n), tile=64, **kw))


def test_mosaic_places_sources_and_earlier_ones_win(tmp_path):
    """A (100 x 120 px) with a transparent square, B edge to edge east of A, C overlapping A's
    south-east corner and reaching further south: the mosaic's origin is the union's top-left
    corner; a window across all equals the hand-assembled frame (A over C where both have data,
    C in A's transparent pixels, 0 and uncovered in the gap); coverage() agrees with
    read_with_coverage(); sha256 changes with the order; a single source is a mosaic of itself."""
    e0, n0 = REF.origin_e, REF.origin_n
    a_rgb, b_rgb, c_rgb = rgb_image(100, 120, 1), rgb_image(80, 60, 2), rgb_image(90, 70, 3)
    alpha = np.full((100, 120, 1), 255, np.uint8)
    alpha[70:90, 90:110] = 0                              # inside the overlap with C
    a = geo_source(tmp_path, 'a.tif', np.concatenate([a_rgb, alpha], -1), e0, n0, compression='zlib')
    b = geo_source(tmp_path, 'b.tif', b_rgb, e0 + 120 * GSD, n0)
    c = geo_source(tmp_path, 'c.tif', c_rgb, e0 + 80 * GSD, n0 - 60 * GSD)
    m = Mosaic([a, b, c])
    assert m.shape == (150, 180) and m.placements == ((0, 0), (0, 120), (60, 80)) and m.gsd_m == GSD
    assert m.georef == GeoRef(33, True, e0, n0)
    frame = np.zeros((150, 180, 3), np.uint8)
    cov = np.zeros((150, 180), bool)
    frame[60:150, 80:150], cov[60:150, 80:150] = c_rgb, True
    frame[0:80, 120:180], cov[0:80, 120:180] = b_rgb, True
    opaque = alpha[..., 0] > 0
    frame[0:100, 0:120][opaque], cov[0:100, 0:120] = a_rgb[opaque], cov[0:100, 0:120] | opaque
    window = (-5, -7, 160, 200)
    got, got_cov = m.read_with_coverage(*window)
    np.testing.assert_array_equal(got, expected(frame, *window))
    np.testing.assert_array_equal(got_cov, expected(np.repeat(cov[..., None], 3, -1).astype(np.uint8),
                                                    *window)[..., 0] > 0)
    np.testing.assert_array_equal(m.coverage(*window), got_cov)
    assert not got_cov[5 + 100:, 7:7 + 80].any()           # south of A, west of C: the gap
    assert Mosaic([c, a, b]).sha256 != m.sha256
    one = Mosaic([b])
    assert one.georef == b.georef and one.shape == b.shape
    np.testing.assert_array_equal(one.read(-3, -3, 90, 70), b.read(-3, -3, 90, 70))
    # the mosaic north-west of its first source: placements shift, the origin is the union's corner
    m2 = Mosaic([b, a])
    assert m2.placements == ((0, 120), (0, 0)) and m2.georef == m.georef


def test_mosaic_of_image_sources_and_unaligned_grids(tmp_path):
    """PNG sources with a georeference given mosaic like GeoTIFFs; a source whose corner is 0.3
    px off the first one's grid is placed at the nearest whole pixel."""
    a_rgb, b_rgb = rgb_image(40, 50, 4), rgb_image(40, 30, 5)
    cv2.imwrite(str(tmp_path / 'a.png'), a_rgb[..., ::-1])
    a = open_source(tmp_path / 'a.png', GSD, REF)
    b = geo_source(tmp_path, 'b.tif', b_rgb, REF.origin_e + (50 + 0.3) * GSD, REF.origin_n - 0.3 * GSD)
    assert isinstance(a, ImageSource) and isinstance(b, TiffSource)
    m = Mosaic([a, b])
    assert m.placements == ((0, 0), (0, 50)) and m.shape == (40, 80)
    np.testing.assert_array_equal(m.read(0, 0, 40, 80), np.concatenate([a_rgb, b_rgb], axis=1))
    assert m.coverage(0, 0, 40, 80).all()


def test_mosaic_refusals(tmp_path):
    """Sources without georeference, of another UTM zone or hemisphere, or a GSD more than
    0.1 % off are refused with the source and the values named; no sources are refused."""
    e0, n0 = REF.origin_e, REF.origin_n
    a = geo_source(tmp_path, 'a.tif', rgb_image(32, 32), e0, n0)
    plain = tmp_path / 'plain.tif'
    tifffile.imwrite(plain, rgb_image(32, 32), metadata=None)
    with pytest.raises(MosaicError, match=r'plain.tif: no georeference'):
        Mosaic([a, TiffSource(plain, gsd_m=GSD)])
    cv2.imwrite(str(tmp_path / 'p.png'), rgb_image(8, 8))
    with pytest.raises(MosaicError, match=r'p.png: no georeference'):
        Mosaic([open_source(tmp_path / 'p.png', GSD)])
    z34 = geo_source(tmp_path, 'z34.tif', rgb_image(32, 32), e0, n0, zone=34)
    with pytest.raises(MosaicError, match=r'z34.tif: EPSG:32634 \(UTM zone 34N\), but .*a.tif is EPSG:32633'):
        Mosaic([a, z34])
    south = geo_source(tmp_path, 's.tif', rgb_image(32, 32), e0, n0, north=False)
    with pytest.raises(MosaicError, match=r's.tif: EPSG:32733 \(UTM zone 33S\)'):
        Mosaic([a, south])
    coarse = geo_source(tmp_path, 'coarse.tif', rgb_image(32, 32), e0 + 8, n0, gsd=0.2504)
    with pytest.raises(MosaicError, match=r'coarse.tif: gsd_m=0.2504 m/px, but .*a.tif has 0.25 \(0.16% off, more '
                                          r'than 0.1%\)'):
        Mosaic([a, coarse])
    assert Mosaic([a, geo_source(tmp_path, 'near.tif', rgb_image(32, 32), e0 + 8, n0, gsd=0.2502)]).gsd_m == GSD
    with pytest.raises(MosaicError, match='no sources'):
        Mosaic([])


def test_open_source_and_image_source(tmp_path):
    """open_source: TiffSource for .tif (tags' GSD), ImageSource for a PNG (gsd_m needed: refused
    without, naming the file); ImageSource reads as read_orthophoto, coverage its rectangle."""
    rgb = rgb_image(50, 60)
    cv2.imwrite(str(tmp_path / 'o.png'), rgb[..., ::-1])
    with pytest.raises(OrthoSourceError, match=r'o.png: gsd_m \(metres per pixel\) is needed'):
        open_source(tmp_path / 'o.png')
    with pytest.raises(OrthoSourceError, match=r'o.png: gsd_m=0: must be a number'):
        open_source(tmp_path / 'o.png', 0)
    src = open_source(tmp_path / 'o.png', 0.1)
    assert src.shape == (50, 60) and src.georef is None and src.sha256 == sha256_file(tmp_path / 'o.png')
    np.testing.assert_array_equal(src.read(-2, 10, 60, 55), expected(rgb, -2, 10, 60, 55))
    np.testing.assert_array_equal(src.coverage(-2, 10, 60, 55), expected(np.ones_like(rgb), -2, 10, 60, 55)[..., 0] > 0)
    geo = write_tiled_geotiff(tmp_path / 'g.tiff', rgb, GSD, REF, tile=32)
    assert isinstance(open_source(geo), TiffSource) and open_source(geo).gsd_m == GSD
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / 'missing.tif')


def test_write_tiled_geotiff(tmp_path):
    """The writer's tags read back with read_geotiff (EPSG 326zz/327zz, PixelIsArea, metres);
    tiles of the size asked; grey is written as one band; bad inputs are refused."""
    for ref in (REF, GeoRef(60, False, 300_000.0, 7_000_000.0)):
        path = write_tiled_geotiff(tmp_path / f'w{ref.zone}.tif', rgb_image()[..., 1], 0.5, ref, tile=48)
        info = read_geotiff(path)
        assert (info.georef, info.gsd_m, info.pixel_is_point, info.source) == (ref, 0.5, False, 'tiepoint+scale')
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            assert page.is_tiled and (page.tilelength, page.tilewidth, page.samplesperpixel) == (48, 48, 1)
    with pytest.raises(OrthoSourceError, match='tile=100: must be a multiple of 16'):
        write_tiled_geotiff(tmp_path / 'x.tif', rgb_image(), GSD, REF, tile=100)
    with pytest.raises(OrthoSourceError, match=r'x.tif: rgb float64 \(4, 4, 3\)'):
        write_tiled_geotiff(tmp_path / 'x.tif', np.zeros((4, 4, 3)), GSD, REF)


def test_mosaic_test_area(tmp_path):
    """Images laid edge to edge in rows, as tiled GeoTIFFs in one zone: the Mosaic of them has
    each image (its k-th rotation/flip in round k) at its place; nothing is overwritten."""
    images = [rgb_image(40, 60, 1), rgb_image(30, 50, 2), rgb_image(50, 20, 3)]
    paths = mosaic_test_area(images, tmp_path / 'area', 0.1, 12, repeat=2, row_width_m=15.0, tile=16,
                             compression='zlib')
    assert [p.name for p in paths][:2] == ['area_000_img0_r0.tif', 'area_001_img1_r0.tif'] and len(paths) == 6
    m = Mosaic([TiffSource(p) for p in paths])
    # row 1: 60 + 50 px (130 with the next would pass 150); row 2 (y 50): img2, img0 rot90, img1 rot90 ...
    assert m.placements[:4] == ((0, 0), (0, 60), (0, 110), (50, 0))
    assert m.georef == GeoRef(12, True, 500_000.0, 5_000_000.0)
    np.testing.assert_array_equal(m.read(0, 60, 30, 50), images[1])
    np.testing.assert_array_equal(m.read(50, 0, 60, 40), np.rot90(images[0]))
    with pytest.raises(FileExistsError, match='area_000_img0_r0.tif exists'):
        mosaic_test_area(images, tmp_path / 'area', 0.1, 12)


@pytest.mark.skipif(not NEON, reason=f'NEON orthophotos not here ({default_images_dir()}: run gplq_assets)')
def test_mosaic_test_area_of_neon_images(tmp_path):
    """The NEON 0.1 m PNGs as a synthetic area (one row): a Mosaic as wide as their widths
    together, each read back exactly."""
    paths = mosaic_test_area(NEON, tmp_path, 0.1, 12, compression='zlib')
    m = Mosaic([TiffSource(p) for p in paths])
    widths = [read_orthophoto(p).shape[1] for p in NEON]
    assert m.shape[1] == sum(widths) and m.size_m[1] == pytest.approx(sum(widths) * 0.1)
    col = sum(widths[:-1])
    last = read_orthophoto(NEON[-1])
    np.testing.assert_array_equal(m.read(0, col, *last.shape[:2]), last)
    assert os.path.getsize(paths[0]) > 0
