"""gplq_map: build a place map of an orthophoto for localizer_node.

Tiles as the drone's nadir camera sees them (``--width`` x ``--height`` px, ``--hfov``) every
``--stride`` metres, at each of ``--heights`` (m above ground) and ``--headings`` yaws,
described by the FP32 reference graph (``--reference-model``) with the feature node's
vocabulary, PCA-reduced (``onboard.placemap``). Geo-referencing (optional, north-up only):
a GeoTIFF orthophoto's own tags (WGS 84 / UTM; ``onboard.geotiff``: the GSD too, ``--gsd``
then only checked), or ``--utm-zone 12N --utm-origin E N`` (UTM of the top-left corner of the
top-left pixel), or ``--utm-zone 12N --world-file ortho.pgw``; the localizer then also
publishes NavSatFix. ``--photos DIR`` (the flight's geotagged photos, ``onboard.photos.map_camera``):
the camera (the image photo_camera_node publishes, HFOV from EXIF) and the heights (the photos'
RelativeAltitude range) come from them, unless given.
"""
import argparse
import os
import sys
import time
from pathlib import Path

from gplq_ros.onboard.geo import GeoRef, parse_zone, read_world_file
from gplq_ros.onboard.geotiff import is_tiff, read_geotiff
from gplq_ros.onboard.paths import default_onboard_models, default_vocab
from gplq_ros.onboard.mapbuild import build_map_file
from gplq_ros.onboard.mapshards import BuildConfig
from gplq_ros.onboard.photos import PhotoCameraConfig, list_photos, map_camera, read_photo
from gplq_ros.onboard.placemap import MapConfig, MapError
from gplq_ros.onboard.settings import settings_of
from gplq_ros.tools.common import cli

DEFAULTS = MapConfig()
BUILD = BuildConfig()
PHOTO_SETTINGS = {s.name: s for s in settings_of(PhotoCameraConfig)}   # photo_camera_node's width, sensor_width_mm
GSD_TOLERANCE = 0.01          # --gsd may differ from a GeoTIFF's pixel size by this share


@cli('gplq_map')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_map', description=__doc__.split('\n\n')[0])
    ap.add_argument('image', type=Path, nargs='+', help='orthophoto (north up): PNG, JPEG or TIFF; a GeoTIFF in '
                    'WGS 84 / UTM gives the georeference and the GSD (read windowed, never whole). Several '
                    'geo-referenced GeoTIFFs (one UTM zone, one GSD) make one map of their mosaic')
    ap.add_argument('--out', type=Path, required=True, help='map file (.safetensors, a .json beside it: loaded whole, '
                    'for areas of up to some 10^5 tiles) or a folder (a sharded map: searched through a compressed '
                    'index and loaded around the position under the localizer\'s map_memory_mb)')
    ap.add_argument('--gsd', type=float, default=None, help='orthophoto metres per pixel (required unless the image '
                    'is a geo-referenced GeoTIFF; then refused if it differs from the file\'s by more than '
                    f'{GSD_TOLERANCE * 100:g} %%)')
    ap.add_argument('--reference-model', type=Path, default=None,
                    help=f'FP32 graph (default {default_onboard_models()["reference_model"]})')
    ap.add_argument('--vocabulary', type=Path, default=None, help=f'default {default_vocab()}')
    ap.add_argument('--stride', type=float, default=DEFAULTS.stride_m, help='grid step, m (default %(default)s)')
    ap.add_argument('--headings', type=int, default=DEFAULTS.headings, help='yaws per place (default %(default)s)')
    ap.add_argument('--heights', type=float, nargs='+', default=None,
                    help=f'camera heights above ground, m (default: from --photos, else {list(DEFAULTS.heights_m)})')
    ap.add_argument('--width', type=int, default=None, help=f'camera width, px (default {DEFAULTS.width}; with '
                    '--photos the published width, the height following the photos\' aspect)')
    ap.add_argument('--height', type=int, default=None, help=f'camera height, px (default: from --photos, else '
                    f'{DEFAULTS.height})')
    ap.add_argument('--hfov', type=float, default=None, help='horizontal field of view, degrees (default: from '
                    f'--photos, else {DEFAULTS.hfov_deg})')
    ap.add_argument('--photos', type=Path, default=None, help='directory of the flight\'s geotagged photos '
                    '(*.jpg): camera size and HFOV (EXIF) and the heights (DJI RelativeAltitude) unless given')
    s = PHOTO_SETTINGS['sensor_width_mm']
    ap.add_argument('--sensor-width-mm', type=float, default=None, help=f'with --photos: {s.help.replace("%", "%%")} '
                    f'{s.describe_range()} (default {s.default!r}; as photo_camera_node)')
    ap.add_argument('--pca-dim', type=int, default=DEFAULTS.pca_dim, help='descriptor dimensions kept '
                    '(default %(default)s)')
    ap.add_argument('--utm-zone', default=None, help='UTM zone of the orthophoto, e.g. 12N')
    ap.add_argument('--utm-origin', type=float, nargs=2, metavar=('E', 'N'), default=None,
                    help='UTM easting, northing of the top-left pixel corner')
    ap.add_argument('--world-file', type=Path, default=None, help='north-up world file (.pgw/.tfw) of the image')
    ap.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                    help='Ray workers (default %(default)s: one per core of this machine, on a local Ray started for '
                    'the build; a map of fewer shards than workers gives the idle cores to threads, one of a single '
                    'shard is built in this process); 0 builds in this process without Ray')
    ap.add_argument('--threads', type=int, default=None, help='intra-op threads per worker (default 1; with '
                    f'--workers 0: {os.cpu_count() or 1})')
    ap.add_argument('--ray-address', default=None, help='a running Ray cluster (`ray start --head` on one machine, '
                    '`ray start --address HEAD:6379` on the others; then auto or HEAD:6379); every worker needs '
                    'gplq_ros, and the graph, vocabulary and orthophotos at the same paths')
    ap.add_argument('--shard', type=float, default=BUILD.shard_m, help='shard side, m (default %(default)s): a '
                    'unit of work, written when done; an interrupted build resumes from the shards written')
    ap.add_argument('--pca-sample', type=int, default=DEFAULTS.pca_sample, help='tiles the PCA is fitted on, evenly '
                    'spread over the map (default %(default)s)')
    ap.add_argument('--keep-build', action='store_true', help='keep the build folder (<out>.build) after the map '
                    'is written')
    ap.add_argument('--force', action='store_true', help='overwrite --out (and start a build of other inputs over)')
    args = ap.parse_args(argv)
    notes = []
    try:
        cfg, georef = _config(args, notes)
    except ValueError as e:      # a field or option out of range, named in the message
        raise MapError(str(e)) from None
    for line in notes:
        print(f'gplq_map: {line}', flush=True)
    t0 = time.perf_counter()
    threads = args.threads or (1 if args.workers else os.cpu_count() or 1)
    try:
        build = BuildConfig(shard_m=args.shard, workers=args.workers, threads=threads, ray_address=args.ray_address)
    except ValueError as e:
        raise MapError(str(e)) from None
    images = args.image[0] if len(args.image) == 1 else args.image
    res = build_map_file(images, args.out, args.reference_model or Path(default_onboard_models()['reference_model']),
                         args.vocabulary or default_vocab(), cfg, georef, args.force, threads, build=build,
                         print_fn=lambda line: print(f'gplq_map: {line}', flush=True), keep_build=args.keep_build)
    print(f'gplq_map: {res.meta.n_tiles} tiles ({cfg.headings} headings, heights {list(cfg.heights_m)} m, '
          f'{cfg.stride_m} m grid) of {res.meta.source_image}, PCA {res.pca_basis.shape[0]} dims '
          f'({res.meta.pca_explained:.3f} of the variance){", " + georef.crs if georef else ""} -> {args.out} in '
          f'{time.perf_counter() - t0:.0f} s')
    return 0


def _config(args, notes=None):
    """(MapConfig, GeoRef or None) from the options; ``notes`` (a list) gets one line per
    value taken from a file (GeoTIFF, photos) rather than given."""
    notes = [] if notes is None else notes
    gsd, georef = _georeference(args, notes)
    camera = _photo_camera(args)
    src = {}

    def pick(name, given, from_photos, default):
        if given is not None:
            src[name] = 'given'
            return given
        if from_photos:
            src[name] = 'photos'
            return from_photos
        src[name] = 'default'
        return default
    width = pick('width', args.width, camera and camera.width, DEFAULTS.width)
    height = pick('height', args.height, camera and camera.height, DEFAULTS.height)
    hfov = pick('hfov', args.hfov, camera and camera.hfov_deg, DEFAULTS.hfov_deg)
    heights = pick('heights', args.heights, camera and camera.heights_m, DEFAULTS.heights_m)
    cfg = MapConfig(stride_m=args.stride, headings=args.headings, heights_m=tuple(heights), width=width,
                    height=height, hfov_deg=hfov, gsd_m=gsd, pca_dim=args.pca_dim,
                    pca_sample=getattr(args, 'pca_sample', DEFAULTS.pca_sample))
    if camera is not None:
        notes.append(f'--photos {args.photos}: {camera.describe()}')
        notes.append(f'map camera {cfg.width}x{cfg.height} px ({src["width"]}/{src["height"]}), HFOV {cfg.hfov_deg:g} '
                     f'deg ({src["hfov"]}), heights {list(cfg.heights_m)} m ({src["heights"]}'
                     f'{"" if camera.heights_m or src["heights"] == "given" else ": no RelativeAltitude"})')
    return cfg, georef


def _photo_camera(args):
    """``photos.MapCamera`` of ``--photos`` (None without)."""
    if args.photos is None:
        if args.sensor_width_mm is not None:
            raise ValueError(f'--sensor-width-mm {args.sensor_width_mm:g} needs --photos')
        return None
    s = PHOTO_SETTINGS['sensor_width_mm']
    sensor = s.default if args.sensor_width_mm is None else args.sensor_width_mm
    if not s.range[0] <= sensor <= s.range[1]:
        raise ValueError(f'--sensor-width-mm={sensor!r}: must be in {s.describe_range()}')
    width = PHOTO_SETTINGS['width'].default if args.width is None else args.width
    if width < 1:
        raise ValueError(f'--width={width!r}: must be >= 1')
    return map_camera([read_photo(p) for p in list_photos(args.photos)], width, sensor)


def _georeference(args, notes):
    """(gsd_m, GeoRef or None): a GeoTIFF's own, or the options'. Several images: each a
    geo-referenced GeoTIFF of one GSD (the mosaic's georeference is their union's)."""
    images = args.image if isinstance(args.image, list) else [args.image]
    if len(images) > 1:
        return _mosaic_georeference(args, images, notes)
    image = Path(images[0])
    given = [o for o, v in (('--utm-zone', args.utm_zone), ('--utm-origin', args.utm_origin),
                            ('--world-file', args.world_file)) if v]
    tif = read_geotiff(image) if is_tiff(image) else None
    if tif is not None and tif.georef is not None:
        if given:
            raise ValueError(f'{"/".join(given)} and {image.name}\'s own georeference ({tif.georef.crs}, GeoTIFF '
                             f'tags): give one of them (the GeoTIFF\'s is used when no option is given)')
        if args.gsd is not None and abs(args.gsd - tif.gsd_m) > GSD_TOLERANCE * tif.gsd_m:
            raise ValueError(f'--gsd {args.gsd:g} contradicts {image.name}\'s pixel size {tif.gsd_m:g} m (GeoTIFF '
                             f'tags; {abs(args.gsd / tif.gsd_m - 1):.1%} off, more than {GSD_TOLERANCE:.0%}): '
                             'omit --gsd')
        notes.append(f'georeference and GSD from the GeoTIFF: {tif.describe()}')
        return tif.gsd_m, tif.georef
    if args.gsd is None:
        raise ValueError(f'--gsd (orthophoto metres per pixel) is needed: {image.name} is not a geo-referenced '
                         'GeoTIFF')
    georef = None
    if args.utm_origin or args.world_file:
        if not args.utm_zone:
            raise ValueError('--utm-origin/--world-file need --utm-zone (e.g. 12N)')
        zone, north = parse_zone(args.utm_zone)
        e, n = args.utm_origin if args.utm_origin else read_world_file(args.world_file, args.gsd)
        georef = GeoRef(zone, north, e, n)
    elif args.utm_zone:
        raise ValueError('--utm-zone without --utm-origin or --world-file')
    return args.gsd, georef


def _mosaic_georeference(args, images, notes):
    given = [o for o, v in (('--utm-zone', args.utm_zone), ('--utm-origin', args.utm_origin),
                            ('--world-file', args.world_file), ('--photos', args.photos)) if v]
    if given:
        raise ValueError(f'{"/".join(given)} with {len(images)} orthophotos: a mosaic takes each GeoTIFF\'s own '
                         'georeference')
    gsds = []
    for p in images:
        tif = read_geotiff(p) if is_tiff(p) else None
        if tif is None or tif.georef is None:
            raise ValueError(f'{Path(p).name}: not a geo-referenced GeoTIFF; several orthophotos make one map only '
                             'with their georeferences')
        gsds.append(tif.gsd_m)
        notes.append(f'mosaic: {tif.describe()}')
    if max(gsds) > min(gsds) * (1 + 1e-3):
        raise ValueError(f'orthophotos of different pixel sizes {sorted(set(gsds))}: resample them to one GSD')
    if args.gsd is not None and abs(args.gsd - gsds[0]) > GSD_TOLERANCE * gsds[0]:
        raise ValueError(f'--gsd {args.gsd:g} contradicts the GeoTIFFs\' pixel size {gsds[0]:g} m: omit --gsd')
    return gsds[0], None


if __name__ == '__main__':
    sys.exit(main())
