"""gplq_georef ORTHO --photos DIR: geo-reference an orthophoto from the geotagged photos it
was made of, and write its world file.

Each photo is registered in the orthophoto (SIFT + RANSAC), its EXIF GPS converted to UTM,
and orthophoto pixels -> UTM fitted (similarity and north-up; ``onboard.georef_fit``). Prints
the residual of every photo, the RMS, GSD and rotation, and writes the north-up world file
(``--world-model similarity`` writes the rotated one, which gplq_map does not read) that
``gplq_map ORTHO --gsd GSD --utm-zone ZONE --world-file OUT`` reads.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from gplq_ros.onboard.georef_fit import GeorefConfig, GeorefError, fit_georeference, load_photos, write_world_file
from gplq_ros.tools.common import add_config_arguments, cli, config_from_args

WORLD_EXT = {'.jpg': '.jgw', '.jpeg': '.jgw', '.png': '.pgw', '.tif': '.tfw', '.tiff': '.tfw'}


def default_out(image: Path) -> Path:
    return image.with_suffix(WORLD_EXT.get(image.suffix.lower(), '.wld'))


@cli('gplq_georef')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_georef', description=__doc__.split('\n\n')[0])
    ap.add_argument('image', type=Path, help='orthophoto (not geo-referenced)')
    ap.add_argument('--photos', type=Path, required=True, help='folder of the geotagged JPEG photos')
    ap.add_argument('--out', type=Path, default=None, help='world file to write (default: beside the image, '
                    '.jgw/.pgw/.tfw)')
    ap.add_argument('--json', type=Path, default=None, help='also write the report as JSON here')
    ap.add_argument('--force', action='store_true', help='overwrite --out / --json')
    add_config_arguments(ap, GeorefConfig, title='fit (GeorefConfig)')
    args = ap.parse_args(argv)
    out = args.out or default_out(args.image)
    try:
        cfg = config_from_args(GeorefConfig, args)
        if not args.image.is_file():
            raise GeorefError(f'orthophoto {args.image}: no such file')
        for p in (out, args.json):
            if p is not None and p.exists() and not args.force:
                raise FileExistsError(f'{p} exists (--force to overwrite)')
        t0 = time.perf_counter()
        photos = load_photos(args.photos)
        res = fit_georeference(args.image, photos, cfg)
    except (GeorefError, ValueError) as e:
        print(f'gplq_georef: error: {e}', file=sys.stderr)
        return 2
    print(res.report())
    write_world_file(out, res.world, force=args.force)
    w = res.world
    print(f'gplq_georef: {len(res.names)}/{len(photos)} photos fitted in {time.perf_counter() - t0:.1f} s -> {out}')
    if w.model == 'north_up':
        print(f'  gplq_map {args.image} --gsd {w.gsd_m!r} --utm-zone {res.zone_text} --world-file {out} ...')
    if args.json:
        args.json.write_text(json.dumps(res.to_dict(), indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
