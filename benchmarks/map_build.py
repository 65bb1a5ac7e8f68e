"""Place map build throughput (issue #20): Ray workers vs one, vs the single-process build, and
build time vs tiles on a mosaic of GeoTIFFs.

1. **Scaling**: the same area (a 130 m square crop of the NEON YELL orthophoto written as a
   tiled GeoTIFF, read windowed; 8 m grid, 8 headings, 40 m, 640 x 480 camera, 24 m shards)
   built (a) by today's single-process path (``placemap.build_map``: one engine of 2 intra-op
   threads over the whole image, no shards), (b) by 1 Ray worker of 1 thread, (c) by 2 Ray
   workers of 1 thread each (``mapshards.build_sharded``). Tiles per second of the whole build
   (Ray start, engines, PCA sample, parts, finish) and of describing the tiles alone (the PCA
   sample and parts phases: every tile is described once, in one or the other); the ratios
   (c)/(b) (the scaling a cluster of N such workers would see: ideal N x (b)) and (c)/(a).
2. **Build time vs tiles**: a mosaic of two NEON orthophotos as tiled GeoTIFFs laid edge to edge
   (``orthosource.mosaic_test_area``: a synthetic layout, see there), 2 headings, 2 Ray workers:
   tiles, seconds, tiles/s.

Run on an otherwise idle machine (2 cores here); ``lscpu`` says which CPU.

    PYTHONPATH=. .venv/bin/python benchmarks/map_build.py
"""
import argparse
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from gplq_ros.onboard.fileformat import BACKBONE_ID
from gplq_ros.onboard.flight import DEFAULT_ORTHO
from gplq_ros.onboard.geo import GeoRef
from gplq_ros.onboard.mapshards import BuildConfig, build_sharded
from gplq_ros.onboard.orthosource import mosaic_test_area, write_tiled_geotiff
from gplq_ros.onboard.paths import default_images_dir, default_onboard_models, default_vocab
from gplq_ros.onboard.placemap import MapConfig, MapMeta, build_map, tile_poses

CFG = MapConfig(stride_m=8.0, headings=8, heights_m=(40.0,), gsd_m=0.1)


def single_process(rgb, graph, vocab, cfg) -> dict:
    from gplq_ros.onboard.engine import load
    t0 = time.perf_counter()
    engine = load(Path(graph), Path(vocab), threads=2)

    def describe(img):
        out = engine(img)
        return out.descriptor, out.boundary
    t1 = time.perf_counter()
    pm = build_map(rgb, describe, cfg, MapMeta(BACKBONE_ID, 'w', 'v', 'g', 's', 'x', [], {}))
    t2 = time.perf_counter()
    return {'tiles': len(pm.poses), 'total_s': t2 - t0, 'work_s': t2 - t1}


def sharded(spec, out: Path, graph, vocab, cfg, build: BuildConfig) -> dict:
    shutil.rmtree(out.with_name(out.name + '.build'), ignore_errors=True)
    t0 = time.perf_counter()
    res = build_sharded(spec, out, Path(graph), Path(vocab), cfg, build,
                        print_fn=lambda s: print('  ' + s, flush=True))
    total = time.perf_counter() - t0
    shutil.rmtree(out.with_name(out.name + '.build'), ignore_errors=True)
    st = res.stats
    return {'tiles': st['tiles'], 'shards': st['shards'], 'total_s': total, 'work_s': st['sample_s'] + st['parts_s'],
            'parts_s': st['parts_s'],
            'sample_s': st['sample_s'], 'start_s': st['start_s'], 'finish_s': st['finish_s']}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', type=Path, default=Path('out/map_build'))
    ap.add_argument('--crop-m', type=float, default=130.0)
    ap.add_argument('--shard', type=float, default=24.0)
    ap.add_argument('--skip-mosaic', action='store_true')
    args = ap.parse_args()
    graph, vocab = default_onboard_models()['reference_model'], default_vocab()
    args.out.mkdir(parents=True, exist_ok=True)
    rgb = cv2.cvtColor(cv2.imread(str(default_images_dir() / DEFAULT_ORTHO)), cv2.COLOR_BGR2RGB)
    n = int(args.crop_m / CFG.gsd_m)
    crop = np.ascontiguousarray(rgb[:n, :n])
    tif = args.out / 'crop.tif'
    if not tif.is_file():
        write_tiled_geotiff(tif, crop, CFG.gsd_m, GeoRef(12, True, 528000.0, 4978250.0))
    spec = [{'path': str(tif), 'gsd_m': None, 'georef': None}]
    print(f'scaling: {len(tile_poses(crop.shape[:2], CFG))} tiles of a {args.crop_m:g} m crop', flush=True)
    rows = {}
    rows['single process, 2 threads'] = single_process(crop, graph, vocab, CFG)
    print(rows, flush=True)
    rows['Ray, 1 worker x 1 thread'] = sharded(spec, args.out / 'w1', graph, vocab, CFG,
                                               BuildConfig(shard_m=args.shard, workers=1, threads=1))
    print(rows, flush=True)
    rows['Ray, 2 workers x 1 thread'] = sharded(spec, args.out / 'w2', graph, vocab, CFG,
                                                BuildConfig(shard_m=args.shard, workers=2, threads=1))
    print(json.dumps(rows, indent=1), flush=True)
    print('\n| build | tiles | s total | tiles/s total | tiles/s describing |\n|---|---|---|---|---|')
    for name, r in rows.items():
        print(f'| {name} | {r["tiles"]} | {r["total_s"]:.0f} | {r["tiles"] / r["total_s"]:.2f} | '
              f'{r["tiles"] / r["work_s"]:.2f} |')
    one, two, sp = (rows[k] for k in ('Ray, 1 worker x 1 thread', 'Ray, 2 workers x 1 thread',
                                      'single process, 2 threads'))
    print(f'\n2 workers / 1 worker: {one["total_s"] / two["total_s"]:.2f}x total, '
          f'{one["work_s"] / two["work_s"]:.2f}x describing (ideal 2.00x; N workers: N x '
          f'{one["tiles"] / one["work_s"]:.2f} tiles/s)')
    print(f'2 workers / single process 2 threads: {sp["total_s"] / two["total_s"]:.2f}x total')
    result = {'scaling': rows}
    if not args.skip_mosaic:
        area = args.out / 'mosaic'
        if not area.is_dir():
            mosaic_test_area([default_images_dir() / DEFAULT_ORTHO,
                              default_images_dir() / '2019_YELL_2_541000_4977000_image_crop.png'], area, 0.1, 12)
        paths = sorted(area.glob('*.tif'))
        cfg = MapConfig(stride_m=8.0, headings=2, heights_m=(40.0,), gsd_m=0.1)
        spec = [{'path': str(p), 'gsd_m': None, 'georef': None} for p in paths]
        r = sharded(spec, args.out / 'mosaic_map', graph, vocab, cfg,
                    BuildConfig(shard_m=100.0, workers=2, threads=1))
        result['mosaic'] = r
        print(f'\nmosaic of {len(paths)} GeoTIFFs: {r["tiles"]} tiles ({r["shards"]} shards) in {r["total_s"]:.0f} s '
              f'= {r["tiles"] / r["total_s"]:.2f} tiles/s (2 Ray workers)')
    (args.out / 'result.json').write_text(json.dumps(result, indent=1))
    return 0


if __name__ == '__main__':
    main()
