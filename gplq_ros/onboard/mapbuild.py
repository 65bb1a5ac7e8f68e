"""gplq_map's library call: a place map (``onboard.placemap``) of an orthophoto file, described
by the FP32 reference graph on the onboard engine. A module of its own so that the localizer,
which only reads maps, does not load the graph runtime."""
from pathlib import Path
from typing import Callable, Optional

from gplq_ros.onboard.engine import load
from gplq_ros.onboard.fileformat import BACKBONE_ID, sha256_file
from gplq_ros.onboard.geo import GeoRef
from gplq_ros.onboard.geotiff import read_orthophoto
from gplq_ros.onboard.placemap import MapConfig, MapError, MapMeta, PlaceMap, build_map, vocabulary_id
from gplq_ros.onboard.vocabulary import Vocabulary


def build_map_file(image: Path, out: Path, reference_graph: Path, vocabulary: Path, cfg: MapConfig,
                   georef: Optional[GeoRef] = None, force: bool = False, threads: int = 2,
                   progress: Callable[[int, int], None] = lambda i, n: None) -> PlaceMap:
    """The map of ``image`` (any image OpenCV reads; a TIFF it cannot, through tifffile:
    ``geotiff.read_orthophoto``) with the FP32 graph's descriptors, saved to ``out``."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f'{out} exists; pass --force to overwrite')
    engine = load(Path(reference_graph), Path(vocabulary), threads=threads)
    if engine.kind != 'fp32':
        raise MapError(f'reference graph {reference_graph}: kind={engine.kind!r}; a map is built with the FP32 graph')
    vocab = Vocabulary.load(Path(vocabulary))
    meta = MapMeta(backbone=BACKBONE_ID, weights_sha256=engine.meta['weights_sha256'],
                   vocabulary_sha256=vocabulary_id(vocab.centers), reference_graph=Path(reference_graph).name,
                   source_image=Path(image).name, source_sha256=sha256_file(image), image_hw=[], config={},
                   georef=georef.to_dict() if georef else None)

    def describe(img):
        out = engine(img)
        return out.descriptor, out.boundary_full
    try:
        ortho = read_orthophoto(Path(image))
    except ValueError as e:              # undecodable pixels: the file and the reason named
        raise MapError(str(e)) from None
    pm = build_map(ortho, describe, cfg, meta, progress)
    pm.save(out, force=force)
    return pm
