"""gplq_map: build a place map of an orthophoto for localizer_node.

Tiles as the drone's nadir camera sees them (``--width`` x ``--height`` px, ``--hfov``) every
``--stride`` metres, at each of ``--heights`` (m above ground) and ``--headings`` yaws,
described by the FP32 reference graph (``--reference-model``) with the feature node's
vocabulary, PCA-reduced (``onboard.placemap``). Geo-referencing (optional, north-up only):
``--utm-zone 12N --utm-origin E N`` (UTM of the top-left corner of the top-left pixel) or
``--utm-zone 12N --world-file ortho.pgw``; the localizer then also publishes NavSatFix.
"""
import argparse
import sys
import time
from pathlib import Path

from gplq_ros.onboard.geo import GeoRef, parse_zone, read_world_file
from gplq_ros.onboard.paths import default_onboard_models, default_vocab
from gplq_ros.onboard.mapbuild import build_map_file
from gplq_ros.onboard.placemap import MapConfig, MapError
from gplq_ros.tools.common import cli

DEFAULTS = MapConfig()


@cli('gplq_map')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_map', description=__doc__.split('\n\n')[0])
    ap.add_argument('image', type=Path, help='orthophoto (north up)')
    ap.add_argument('--out', type=Path, required=True, help='map file (.safetensors; a .json beside it)')
    ap.add_argument('--gsd', type=float, required=True, help='orthophoto metres per pixel')
    ap.add_argument('--reference-model', type=Path, default=None,
                    help=f'FP32 graph (default {default_onboard_models()["reference_model"]})')
    ap.add_argument('--vocabulary', type=Path, default=None, help=f'default {default_vocab()}')
    ap.add_argument('--stride', type=float, default=DEFAULTS.stride_m, help='grid step, m (default %(default)s)')
    ap.add_argument('--headings', type=int, default=DEFAULTS.headings, help='yaws per place (default %(default)s)')
    ap.add_argument('--heights', type=float, nargs='+', default=list(DEFAULTS.heights_m),
                    help='camera heights above ground, m (default %(default)s)')
    ap.add_argument('--width', type=int, default=DEFAULTS.width, help='camera width, px (default %(default)s)')
    ap.add_argument('--height', type=int, default=DEFAULTS.height, help='camera height, px (default %(default)s)')
    ap.add_argument('--hfov', type=float, default=DEFAULTS.hfov_deg, help='horizontal field of view, degrees '
                    '(default %(default)s)')
    ap.add_argument('--pca-dim', type=int, default=DEFAULTS.pca_dim, help='descriptor dimensions kept '
                    '(default %(default)s)')
    ap.add_argument('--utm-zone', default=None, help='UTM zone of the orthophoto, e.g. 12N')
    ap.add_argument('--utm-origin', type=float, nargs=2, metavar=('E', 'N'), default=None,
                    help='UTM easting, northing of the top-left pixel corner')
    ap.add_argument('--world-file', type=Path, default=None, help='north-up world file (.pgw/.tfw) of the image')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--force', action='store_true', help='overwrite --out')
    args = ap.parse_args(argv)
    try:
        cfg, georef = _config(args)
    except ValueError as e:      # a field or option out of range, named in the message
        raise MapError(str(e)) from None
    t0 = time.perf_counter()
    last = [0.0]

    def progress(i, n):
        if time.perf_counter() - last[0] > 10 or i == n:
            last[0] = time.perf_counter()
            print(f'gplq_map: {i}/{n} tiles', flush=True)
    pm = build_map_file(args.image, args.out, args.reference_model or Path(default_onboard_models()['reference_model']),
                        args.vocabulary or default_vocab(), cfg, georef, args.force, args.threads, progress)
    print(f'gplq_map: {pm.meta.n_tiles} tiles ({args.headings} headings, heights {args.heights} m, {args.stride} m '
          f'grid) of {args.image.name}, PCA {pm.descriptors.shape[1]} dims ({pm.meta.pca_explained:.3f} of the '
          f'variance){", " + georef.crs if georef else ""} -> {args.out} in {time.perf_counter() - t0:.0f} s')
    return 0


def _config(args):
    cfg = MapConfig(stride_m=args.stride, headings=args.headings, heights_m=tuple(args.heights), width=args.width,
                    height=args.height, hfov_deg=args.hfov, gsd_m=args.gsd, pca_dim=args.pca_dim)
    georef = None
    if args.utm_origin or args.world_file:
        if not args.utm_zone:
            raise ValueError('--utm-origin/--world-file need --utm-zone (e.g. 12N)')
        zone, north = parse_zone(args.utm_zone)
        e, n = args.utm_origin if args.utm_origin else read_world_file(args.world_file, args.gsd)
        georef = GeoRef(zone, north, e, n)
    elif args.utm_zone:
        raise ValueError('--utm-zone without --utm-origin or --world-file')
    return cfg, georef


if __name__ == '__main__':
    sys.exit(main())
