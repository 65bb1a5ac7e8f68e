"""gplq_fidelity_onboard: fidelity and place recognition of the onboard forms, through the
onboard engine, on real aerial images from sources the artifacts never saw.

Rows: FP32, ORT dynamic int8, ORT static int8 QDQ and each ``--artifacts`` GPLQ artifact,
exported for ``--size`` x ``--size``; per ``--source``: token cosine, boundary SSIM, corner
repeatability and descriptor cosine to FP32 on the place queries, and R@1/R@5 of the
queries against an FP32-built database of the source's tiles (``offline.onboard_eval``).
Prints a markdown table; ``--json F`` writes all.
"""
import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from gplq_ros.offline.api import load_extractor
from gplq_ros.offline.data import default_calibration_images, default_evaluation_sources, list_images, load_images
from gplq_ros.offline.onboard_eval import build_forms, evaluate_forms, markdown_table
from gplq_ros.onboard.paths import default_vocab
from gplq_ros.onboard.places import PlaceConfig
from gplq_ros.onboard.vocabulary import Vocabulary
from gplq_ros.tools.common import cli


def parse_source(text: str):
    if '=' not in text:
        raise argparse.ArgumentTypeError(f'--source {text!r}: expected NAME=PATH[,PATH...]')
    name, paths = text.split('=', 1)
    return name, [Path(p) for p in paths.split(',') if p]


@cli('gplq_fidelity_onboard')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_fidelity_onboard', description=__doc__.split('\n\n')[0])
    ap.add_argument('--artifacts', nargs='*', type=Path, default=[], help='GPLQ artifacts to compare')
    ap.add_argument('--source', type=parse_source, action='append', default=None, metavar='NAME=PATH[,PATH]',
                    help='evaluation images of one source (dirs/files); default: the cached held-out sources')
    ap.add_argument('--size', type=int, default=224, help='square network input (default 224)')
    ap.add_argument('--tile', type=int, default=PlaceConfig.tile, help='source pixels per place tile')
    ap.add_argument('--max-places', type=int, default=0, help='queries per image (0: every tile that fits)')
    ap.add_argument('--vocab', type=Path, default=None, help=f'default {default_vocab()}')
    ap.add_argument('--workdir', type=Path, default=Path('out/fidelity_onboard'))
    ap.add_argument('--no-peers', action='store_true', help='rows: FP32 and the artifacts only')
    ap.add_argument('--backend', choices=('onnxruntime', 'openvino'), default='onnxruntime',
                    help='graph runtime of every row (default onnxruntime)')
    ap.add_argument('--json', type=Path, default=None)
    args = ap.parse_args(argv)
    sources = dict(args.source) if args.source else default_evaluation_sources()
    ext = load_extractor()
    vocab = Vocabulary.load(args.vocab or default_vocab(), ext.weights_sha256)
    forms = build_forms(ext, args.artifacts, load_images(default_calibration_images()), args.workdir, args.size)
    if args.no_peers:
        forms = {k: v for k, v in forms.items() if k == 'FP32' or k.startswith('GPLQ')}
    cfg = PlaceConfig(tile=args.tile, stride=args.tile // 2, size=args.size)
    results = evaluate_forms(forms, {n: load_images(list_images(p)) for n, p in sources.items()}, vocab.centers,
                             cfg, args.max_places, backend=args.backend)
    print(markdown_table(results))
    if args.json:
        args.json.write_text(json.dumps({'place_config': asdict(cfg), 'rows': [asdict(r) for r in results]},
                                        indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
