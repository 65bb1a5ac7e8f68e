"""What gplq_map takes from users' files (issue #19, "maps of what users have"): a GeoTIFF's
own georeference and GSD (``onboard.geotiff``, files written here with tifffile and its
GeoKey directory), its pixels, the refusals with the tag or key named, gplq_map's options
around them, and the camera and heights from a flight's photos (``photos.map_camera``, real
DJI photos of ../shared/datasets/brighton_beach, skipped when absent)."""
import os
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import tifffile
from helpers.cli import run_module

from gplq_ros.onboard import photos as ph
from gplq_ros.onboard.geo import GeoRef, read_world_file
from gplq_ros.onboard.geotiff import GeoTiffError, read_geotiff, read_orthophoto
from gplq_ros.tools.map import _config

REPO = Path(__file__).resolve().parents[1]
BRIGHTON = Path(os.environ.get('GPLQ_BRIGHTON_BEACH', REPO.parent / 'shared' / 'datasets' / 'brighton_beach'))
PHOTOS = BRIGHTON / 'images'
needs_brighton = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f'real DJI photos not here: {PHOTOS} is absent '
                                    '(brighton_beach dataset, ../shared/datasets)')
E0, N0, PIX = 512_345.5, 4_100_678.25, 0.25        # top-left pixel corner (UTM 33N), metres per pixel


def write_geotiff(path: Path, rgb: np.ndarray, scale=(PIX, PIX), tiepoints=(0, 0, E0, N0), matrix=None,
                  projected=32633, geographic=None, model=1, raster=1, units=9001, citation='WGS 84 / UTM zone 33N',
                  compression=None) -> Path:
    """A GeoTIFF as GDAL lays one out: ModelPixelScaleTag + ModelTiepointTag (``tiepoints``:
    groups of raster i, j, model X, Y) or ModelTransformationTag (``matrix``, 16 values), and
    a GeoKeyDirectoryTag (keys sorted, SHORT values in place, the citation in
    GeoAsciiParamsTag); a key or tag given as None is left out."""
    tags = []
    if scale is not None:
        tags.append((33550, 'd', 3, (*scale, 0.0), False))
    if tiepoints is not None:
        t = np.reshape(tiepoints, (-1, 4))
        tp = tuple(float(v) for i, j, x, y in t for v in (i, j, 0.0, x, y, 0.0))
        tags.append((33922, 'd', len(tp), tp, False))
    if matrix is not None:
        tags.append((34264, 'd', 16, tuple(float(v) for v in matrix), False))
    keys = {1024: model, 1025: raster, 2048: geographic, 3072: projected, 3076: units}
    entries = [(k, 0, 1, v) for k, v in sorted(keys.items()) if v is not None]
    if citation is not None:
        text = citation + '|'
        entries = sorted(entries + [(1026, 34737, len(text), 0)])
        tags.append((34737, 's', 0, text, False))
    if model is not None:
        directory = (1, 1, 0, len(entries)) + tuple(v for e in entries for v in e)
        tags.append((34735, 'H', len(directory), directory, False))
    tifffile.imwrite(path, rgb, photometric='rgb' if rgb.ndim == 3 else 'minisblack', compression=compression,
                     extratags=tags)
    return path


def rgb_image(h=200, w=300):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def map_args(image, **kw):
    """gplq_map's options as argparse leaves them (defaults: none given)."""
    a = dict(image=Path(image), stride=8.0, headings=8, heights=None, width=None, height=None, hfov=None, gsd=None,
             pca_dim=256, utm_zone=None, utm_origin=None, world_file=None, photos=None, sensor_width_mm=None)
    a.update(kw)
    return SimpleNamespace(**a)


def test_geotiff_georef_is_the_world_file_one(tmp_path):
    """300x200 RGB, UTM 33N, 0.25 m, PixelIsArea: gplq_map takes the same GeoRef and GSD from the
    GeoTIFF's tags as from the same pixels in a plain TIFF with a .tfw and --utm-zone 33N; the
    pixels load as written."""
    rgb = rgb_image()
    geo = write_geotiff(tmp_path / 'ortho.tif', rgb)
    plain = tmp_path / 'plain.tif'
    tifffile.imwrite(plain, rgb, photometric='rgb')
    tfw = plain.with_suffix('.tfw')      # pixel size, rotations, centre of the top-left pixel
    tfw.write_text(f'{PIX}\n0\n0\n{-PIX}\n{E0 + PIX / 2!r}\n{N0 - PIX / 2!r}\n')
    gt = read_geotiff(geo)
    assert (gt.width, gt.height, gt.gsd_m, gt.pixel_is_point) == (300, 200, PIX, False)
    assert gt.georef == GeoRef(33, True, E0, N0) and gt.georef.crs == 'EPSG:32633'
    notes = []
    cfg, georef = _config(map_args(geo), notes)
    assert georef == gt.georef and cfg.gsd_m == PIX
    assert any('EPSG:32633' in n and 'GSD 0.25' in n for n in notes), notes
    cfg_w, georef_w = _config(map_args(plain, gsd=PIX, utm_zone='33N', world_file=tfw))
    assert georef_w == georef and cfg_w == cfg
    assert read_world_file(tfw, PIX) == pytest.approx((E0, N0), abs=1e-9)
    assert read_geotiff(plain).georef is None
    assert np.array_equal(read_orthophoto(geo), rgb)
    # the same grid from a tiepoint elsewhere in the image, and from ModelTransformationTag
    off = write_geotiff(tmp_path / 'off.tif', rgb, tiepoints=(10, 20, E0 + 10 * PIX, N0 - 20 * PIX))
    assert read_geotiff(off).georef == georef
    m = (PIX, 0, 0, E0, 0, -PIX, 0, N0, 0, 0, 0, 0, 0, 0, 0, 1)
    tr = read_geotiff(write_geotiff(tmp_path / 'tr.tif', rgb, scale=None, tiepoints=None, matrix=m))
    assert (tr.georef, tr.gsd_m, tr.source) == (georef, PIX, 'transformation')
    # southern hemisphere: EPSG 327zz
    south = read_geotiff(write_geotiff(tmp_path / 's.tif', rgb, projected=32756, citation=None))
    assert (south.georef.zone, south.georef.north, south.georef.crs) == (56, False, 'EPSG:32756')


def test_pixel_is_point_shifts_half_a_pixel(tmp_path):
    """PixelIsPoint: raster (0, 0) is the top-left pixel's centre, so the map origin (its
    corner) is half a pixel west and north of the tiepoint; a file tied at that centre gives
    the PixelIsArea file's origin."""
    rgb = rgb_image()
    pt = read_geotiff(write_geotiff(tmp_path / 'p.tif', rgb, raster=2))
    assert pt.pixel_is_point and (pt.georef.origin_e, pt.georef.origin_n) == (E0 - PIX / 2, N0 + PIX / 2)
    centre = write_geotiff(tmp_path / 'c.tif', rgb, raster=2, tiepoints=(0, 0, E0 + PIX / 2, N0 - PIX / 2))
    assert read_geotiff(centre).georef == GeoRef(33, True, E0, N0)
    m = (PIX, 0, 0, E0, 0, -PIX, 0, N0, 0, 0, 0, 0, 0, 0, 0, 1)
    tr = read_geotiff(write_geotiff(tmp_path / 't.tif', rgb, scale=None, tiepoints=None, matrix=m, raster=2))
    assert tr.georef == pt.georef


@pytest.mark.parametrize('kw,match', [
    (dict(projected=3857), r'ProjectedCSTypeGeoKey=3857 \(not a WGS 84 / UTM zone'),
    (dict(projected=25833), r'ProjectedCSTypeGeoKey=25833 \(not a WGS 84 / UTM zone'),      # ETRS89 / UTM 33N
    (dict(projected=32767), r'ProjectedCSTypeGeoKey=32767 \(user-defined'),
    (dict(projected=None, geographic=4326, model=2, scale=(2.7e-6, 2.7e-6), tiepoints=(0, 0, 15.2, 46.1)),
     r'GeographicTypeGeoKey=4326 .*gdalwarp -t_srs EPSG:32633 '),
    (dict(projected=None, geographic=4326, model=2, scale=(2.7e-6, 2.7e-6), tiepoints=(0, 0, -70.6, -33.4)),
     r'GeographicTypeGeoKey=4326 .*EPSG:32719 '),
    (dict(projected=None), r'no ProjectedCSTypeGeoKey \(3072\)'),
    (dict(scale=None, tiepoints=None, matrix=(PIX, 0.01, 0, E0, 0.01, -PIX, 0, N0, 0, 0, 0, 0, 0, 0, 0, 1)),
     r'ModelTransformationTag \(34264\) rotation/shear terms \(0.01, 0.01\)'),
    (dict(scale=None, tiepoints=None, matrix=(PIX, 0, 0, E0, 0, PIX, 0, N0, 0, 0, 0, 0, 0, 0, 0, 1)),
     r'ModelTransformationTag \(34264\) pixel size .*not north-up'),
    (dict(scale=(0.25, 0.26)), r'pixels are not square \(tiepoint\+scale: 0.25 m east, 0.26 m south'),
    (dict(scale=(0.25, -0.25)), r'ModelPixelScaleTag \(33550\)=\(0.25, -0.25, 0.0\): pixel sizes must be > 0'),
    (dict(tiepoints=(0, 0, E0, N0, 299, 199, E0 + 75, N0 - 50)), r'ModelTiepointTag \(33922\) holds 2 tiepoints'),
    (dict(model=None, citation=None), r'no GeoKeyDirectoryTag \(34735\): the CRS is unknown'),
    (dict(units=9002), r'ProjLinearUnitsGeoKey=9002 \(3076\): not metres'),
    (dict(raster=3), r'GTRasterTypeGeoKey=3 \(1025\)'),
    (dict(tiepoints=None), r'ModelTiepointTag \(33922\) is missing'),
])
def test_georeferences_a_map_cannot_take_are_refused(tmp_path, kw, match):
    path = write_geotiff(tmp_path / 'bad.tif', rgb_image(), **kw)
    with pytest.raises(GeoTiffError, match=match) as e:
        read_geotiff(path)
    assert str(path) in str(e.value)


def test_nearly_square_pixels_get_one_gsd(tmp_path):
    """Pixel sizes that differ by less than half a pixel over the image's larger side (300 px:
    here 0.015 px) are one GSD, their mean; 0.26 vs 0.25 m (6 px) is refused (above)."""
    gt = read_geotiff(write_geotiff(tmp_path / 'n.tif', rgb_image(), scale=(PIX, PIX * (1 + 1e-4))))
    assert gt.gsd_m == pytest.approx(PIX * (1 + 0.5e-4), rel=1e-12)


def test_gplq_map_options_with_a_geotiff(tmp_path):
    """--gsd is optional with a geo-referenced GeoTIFF and refused when it contradicts the file
    by more than 1 %; --world-file / --utm-* beside the file's georeference are refused naming
    both; a plain TIFF is an un-geo-referenced image that needs --gsd, as a PNG does."""
    rgb = rgb_image()
    geo = write_geotiff(tmp_path / 'ortho.tif', rgb)
    cfg, _ = _config(map_args(geo, gsd=PIX * 1.005))          # within 1 %: the file's pixel size is used
    assert cfg.gsd_m == PIX
    with pytest.raises(ValueError, match=r'--gsd 0.3 contradicts ortho.tif\'s pixel size 0.25 m .*20.0% off'):
        _config(map_args(geo, gsd=0.3))
    tfw = tmp_path / 'ortho.tfw'
    tfw.write_text(f'{PIX}\n0\n0\n{-PIX}\n{E0}\n{N0}\n')
    with pytest.raises(ValueError, match=r'--utm-zone/--world-file and ortho.tif\'s own georeference \(EPSG:32633'):
        _config(map_args(geo, gsd=PIX, utm_zone='33N', world_file=tfw))
    with pytest.raises(ValueError, match=r'--utm-zone/--utm-origin and ortho.tif\'s own georeference'):
        _config(map_args(geo, utm_zone='33N', utm_origin=[E0, N0]))
    plain = tmp_path / 'plain.tiff'
    tifffile.imwrite(plain, rgb, photometric='rgb')
    with pytest.raises(ValueError, match=r'--gsd \(orthophoto metres per pixel\) is needed: plain.tiff is not a '
                       'geo-referenced GeoTIFF'):
        _config(map_args(plain))
    cfg, georef = _config(map_args(plain, gsd=0.1))
    assert georef is None and cfg.gsd_m == 0.1
    with pytest.raises(FileNotFoundError, match='none.tif'):
        _config(map_args(tmp_path / 'none.tif'))
    # the console script: one line naming both, exit 2
    res = run_module('gplq_ros.tools.map', geo, '--out', tmp_path / 'm.safetensors', '--world-file', tfw,
                     '--utm-zone', '33N', timeout=300)
    assert res.returncode == 2 and 'gplq_map: error: --utm-zone/--world-file and ortho.tif' in res.stderr, res.stderr
    assert 'Traceback' not in res.stderr


def test_orthophoto_pixels(tmp_path):
    """OpenCV reads GeoTIFFs as GDAL writes them (tiled, Deflate with a predictor, band
    interleaved; LZW, JPEG and PackBits were checked with Pillow-written files); an LZMA one it cannot
    decode comes through tifffile; grey becomes RGB; 16-bit samples are refused (OpenCV would
    keep their top 8 bits)."""
    rgb = rgb_image()
    lzma = write_geotiff(tmp_path / 'lzma.tif', rgb, compression='lzma')
    assert cv2.imread(str(lzma)) is None            # not in OpenCV's libtiff: the tifffile path
    assert np.array_equal(read_orthophoto(lzma), rgb)
    gdal_like = tmp_path / 'tiled.tif'         # TILED=YES COMPRESS=DEFLATE PREDICTOR=2, and INTERLEAVE=BAND
    tifffile.imwrite(gdal_like, rgb, photometric='rgb', tile=(64, 64), compression='zlib', predictor=True)
    assert np.array_equal(read_orthophoto(gdal_like), rgb)
    tifffile.imwrite(tmp_path / 'band.tif', np.ascontiguousarray(rgb.transpose(2, 0, 1)), photometric='rgb',
                     planarconfig='separate')
    assert np.array_equal(read_orthophoto(tmp_path / 'band.tif'), rgb)
    grey = write_geotiff(tmp_path / 'grey.tif', rgb[..., 1], compression='lzma')
    assert np.array_equal(read_orthophoto(grey), np.repeat(rgb[..., 1:2], 3, axis=-1))
    deep = write_geotiff(tmp_path / 'deep.tif', rgb.astype(np.uint16) * 8)
    with pytest.raises(ValueError, match=r'deep.tif: uint16 samples \(values 0..2040\); gplq_map takes 8-bit'):
        read_orthophoto(deep)
    (tmp_path / 'junk.tif').write_bytes(b'II*\x00junk')
    with pytest.raises(GeoTiffError, match=r'junk.tif: neither OpenCV nor tifffile can decode'):
        read_orthophoto(tmp_path / 'junk.tif')
    with pytest.raises(GeoTiffError, match=r'junk.tif: not a readable TIFF'):
        read_geotiff(tmp_path / 'junk.tif')


# --- the flight's photos: camera and heights ----------------------------------------------

def meta(name='a.jpg', alt=40.0, t=0.0, size=(4000, 3000), f35=24.0):
    return ph.PhotoMeta(path=Path(name), width=size[0], height=size[1], focal_mm=4.5, focal_35mm=f35, lat=46.8,
                        lon=-92.0, alt_m=200.0, time_s=t, xmp=(('RelativeAltitude', alt),) if alt is not None else ())


def test_map_heights_and_camera_from_photo_tags(tmp_path):
    """Heights: one (the median) within a factor 1.1, else 1.1x apart at most from the lowest
    to the highest; camera: 640 wide at the photos' aspect, HFOV of the EXIF 35 mm equivalent."""
    assert ph.map_heights([39.8, 40.2, 40.1]) == [40.1]
    hs = ph.map_heights([30.0, 50.0])
    assert hs[0] == 30.0 and hs[-1] == 50.0 and max(b / a for a, b in zip(hs, hs[1:])) <= 1.1 + 1e-3
    with pytest.raises(ph.PhotoError, match='all > 0'):
        ph.map_heights([0.0, 10.0])
    cam = ph.map_camera([meta('b.jpg', 55.0, 2.0), meta('a.jpg', 40.0, 1.0), meta('c.jpg', None, 3.0)])
    assert (cam.width, cam.height, cam.first.path.name) == (640, 480, 'a.jpg')
    assert cam.hfov_deg == pytest.approx(np.degrees(2 * np.arctan(18 / 24)), abs=1e-3)     # 73.74 deg
    assert cam.heights_m == tuple(ph.map_heights([40.0, 55.0])) and cam.altitude_range_m == (40.0, 55.0)
    assert 'in 2 of 3 photos' in cam.describe()
    assert ph.map_camera([meta(alt=None)]).heights_m == ()
    with pytest.raises(ph.PhotoError, match=r'b.jpg: 4000x2250 px, but a.jpg is 4000x3000'):
        ph.map_camera([meta('a.jpg'), meta('b.jpg', t=1.0, size=(4000, 2250))])


@needs_brighton
def test_gplq_map_camera_and_heights_from_real_photos(tmp_path):
    """gplq_map --photos on the 18 Phantom 3 photos (4000x2250, 20 mm equivalent, RelativeAltitude
    39.8-40.2 m): camera 640x360, HFOV 2 atan(18/20) = 83.97 deg, one height 40.1 m; what is
    given explicitly wins (--width keeps the photos' aspect); without --photos the defaults."""
    ortho = tmp_path / 'o.png'
    notes = []
    cfg, _ = _config(map_args(ortho, gsd=0.1, photos=PHOTOS), notes)
    assert (cfg.width, cfg.height, cfg.heights_m) == (640, 360, (40.1,))
    assert cfg.hfov_deg == pytest.approx(83.974, abs=1e-3)
    assert any('640x360 px (photos/photos), HFOV 83.974 deg (photos), heights [40.1] m (photos)' in n
               for n in notes), notes
    assert any('RelativeAltitude 39.8..40.2 m in 18 of 18 photos' in n for n in notes), notes
    cfg, _ = _config(map_args(ortho, gsd=0.1, photos=PHOTOS, width=1280, heights=[40.0, 55.0], hfov=80.0))
    assert (cfg.width, cfg.height, cfg.hfov_deg, cfg.heights_m) == (1280, 720, 80.0, (40.0, 55.0))
    cfg, _ = _config(map_args(ortho, gsd=0.1, photos=PHOTOS, sensor_width_mm=6.17))       # FC300's 1/2.3" sensor
    assert cfg.hfov_deg == pytest.approx(np.degrees(2 * np.arctan(6.17 / 2 / 3.61)), abs=1e-3)
    default, _ = _config(map_args(ortho, gsd=0.1))
    assert (default.width, default.height, default.hfov_deg, default.heights_m) == (640, 480, 70.0, (40.0,))
    with pytest.raises(ValueError, match='--sensor-width-mm 6.17 needs --photos'):
        _config(map_args(ortho, gsd=0.1, sensor_width_mm=6.17))
    with pytest.raises(ValueError, match=r"photos='.*nowhere': not a directory"):
        _config(map_args(ortho, gsd=0.1, photos=tmp_path / 'nowhere'))
    # the console script prints what it chose before it builds (here it stops at the missing vocabulary)
    geo = write_geotiff(tmp_path / 'ortho.tif', rgb_image())
    res = run_module('gplq_ros.tools.map', geo, '--out', tmp_path / 'm.safetensors', '--photos', PHOTOS,
                     '--vocabulary', tmp_path / 'none.safetensors', timeout=300)
    assert res.returncode == 2 and 'none.safetensors' in res.stderr, res.stderr
    assert 'gplq_map: georeference and GSD from the GeoTIFF: ortho.tif: EPSG:32633' in res.stdout, res.stdout
    assert 'gplq_map: map camera 640x360 px (photos/photos), HFOV 83.974 deg (photos), heights [40.1] m' in res.stdout


def test_gplq_map_builds_a_map_of_a_geotiff(fp32_graph, vocab_file, manifest, tmp_path):
    """End to end: a 400x300 px crop of the demo orthophoto (NEON, 10 cm) written as a GeoTIFF
    (UTM 12N, Deflate) -> gplq_map without --gsd or --utm-*: the map's georeference
    and GSD are the file's."""
    from gplq_ros.onboard.flight import DEFAULT_ORTHO
    from gplq_ros.onboard.placemap import PlaceMap
    full = cv2.cvtColor(cv2.imread(os.path.join(manifest['images']['dir'], DEFAULT_ORTHO)), cv2.COLOR_BGR2RGB)
    crop = np.ascontiguousarray(full[500:800, 600:1000])
    e0, n0 = 528_060.0, 4_978_180.0            # an origin for the test (the crop's own is not recorded)
    tif = write_geotiff(tmp_path / 'crop.tif', crop, scale=(0.1, 0.1), tiepoints=(0, 0, e0, n0), projected=32612,
                        citation='WGS 84 / UTM zone 12N', compression='zlib')
    out = tmp_path / 'crop.safetensors'
    res = run_module('gplq_ros.tools.map', tif, '--out', out, '--stride', 8, '--headings', 2, '--heights', 10,
                     '--width', 160, '--height', 120, '--reference-model', fp32_graph, '--vocabulary', vocab_file)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'georeference and GSD from the GeoTIFF: crop.tif: EPSG:32612' in res.stdout, res.stdout
    pm = PlaceMap.load(out)
    assert pm.georef == GeoRef(12, True, e0, n0) and pm.config.gsd_m == 0.1
    assert pm.meta.image_hw == [300, 400] and pm.meta.n_tiles == 12, (pm.meta.image_hw, pm.meta.n_tiles)
