"""gplq_map's library call: a place map of orthophoto(s), described by the FP32 reference
graph on the onboard engine, built in shards (``onboard.mapshards``: in this process or on Ray)
and written as one ``PlaceMap`` file (``.safetensors``) or a sharded map folder
(``onboard.mapstore``). A module of its own so that the localizer, which only reads maps, does
not load the graph runtime."""
import shutil
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from gplq_ros.onboard.geo import GeoRef
from gplq_ros.onboard.mapshards import BuildConfig, build_sharded
from gplq_ros.onboard.mapstore import MANIFEST, BuildResult, write_sharded
from gplq_ros.onboard.placemap import MapConfig, PlaceMap


def is_single_file(out: Path) -> bool:
    """A ``.safetensors`` output is one map file; anything else a sharded map folder."""
    return Path(out).suffix == '.safetensors'


def build_map_file(image: Union[Path, Sequence[Path]], out: Path, reference_graph: Path, vocabulary: Path,
                   cfg: MapConfig, georef: Optional[GeoRef] = None, force: bool = False, threads: int = 2,
                   progress: Callable[[int, int], None] = lambda i, n: None, build: Optional[BuildConfig] = None,
                   print_fn: Callable[[str], None] = lambda s: None, keep_build: bool = False) -> Union[PlaceMap,
                                                                                                        BuildResult]:
    """The map of ``image`` (one orthophoto: any image OpenCV reads, or a TIFF read windowed
    through ``orthosource``; or several geo-referenced ones: a mosaic) with the FP32 graph's
    descriptors, saved to ``out``: a ``PlaceMap`` file (returned) when ``out`` ends in
    ``.safetensors``, else a sharded map folder (the ``BuildResult`` returned). ``build``: shards
    and workers (default: in this process with ``threads`` threads). The build folder
    ``<out>.build`` (resumable units) is removed once the map is written, unless ``keep_build``."""
    out = Path(out)
    single = is_single_file(out)
    if (out.exists() if single else (out / MANIFEST).exists()) and not force:
        raise FileExistsError(f'{out} exists; pass --force to overwrite')
    images = [Path(image)] if isinstance(image, (str, Path)) else [Path(p) for p in image]
    spec = [{'path': str(p), 'gsd_m': cfg.gsd_m, 'georef': georef.to_dict() if georef else None} for p in images]
    build = build or BuildConfig(workers=0, threads=threads)
    res = build_sharded(spec, out, Path(reference_graph), Path(vocabulary), cfg, build, force=force,
                        print_fn=print_fn, progress=progress)
    if single:
        pm = res.placemap()
        pm.save(out, force=force)
        result = pm
    else:
        write_sharded(res, out, force=force)
        result = res
    if not keep_build:
        shutil.rmtree(out.with_name(out.name + '.build'), ignore_errors=True)
    return result
