"""gplq_export: write the ONNX graph the onboard engine runs, for one input size.

``--fp32``: the FP32 backbone (the monitor's reference). ``--model ARTIFACT``: the GPLQ
model, activations as QuantizeLinear/DequantizeLinear pairs with the artifact's own
scales and zero-points (a Clip keeps sub-8-bit codes in range), weights as their
dequantized 4-bit grid values; layers with one scale per output channel then get int8
code initializers + a per-channel DequantizeLinear, which ONNX Runtime runs as integer
MatMuls (``offline.onnx_export.integer_weights``). By default those int8 codes are left
out of the ONNX file (``--standalone`` keeps them in): the engine fills them at load from
the artifact's packed 4-bit codes, so ship the .onnx and the .safetensors side by side.
"""
import argparse
import sys
from pathlib import Path

from gplq_ros.offline.api import export, export_fp32, load_extractor
from gplq_ros.onboard.preprocess import ONBOARD_INPUT_HW
from gplq_ros.tools.common import cli


@cli('gplq_export')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_export', description=__doc__.split('\n\n')[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument('--fp32', action='store_true', help='export the FP32 backbone')
    src.add_argument('--model', type=Path, help='GPLQ artifact to export')
    ap.add_argument('--weights', type=Path, default=None, help='FP32 weights (with --fp32)')
    ap.add_argument('--size', type=int, nargs=2, default=list(ONBOARD_INPUT_HW), metavar=('H', 'W'),
                    help='network input size, multiples of 14 (default %(default)s: 640x480 cameras)')
    ap.add_argument('--out', type=Path, required=True)
    ap.add_argument('--standalone', action='store_true',
                    help='keep the int8 weight codes in the ONNX file instead of reading them from the artifact')
    ap.add_argument('--force', action='store_true')
    args = ap.parse_args(argv)
    try:
        if args.fp32:
            path = export_fp32(load_extractor(args.weights), args.out, tuple(args.size), force=args.force)
        else:
            r = export(args.model, args.out, tuple(args.size), packed=not args.standalone, force=args.force)
            path = r['path']
            print(f'gplq_export: {r["int8"]} of {r["layers"]} layers as int8 weights '
                  f'(per-output-channel layers; per-group layers stay float); {r["fused"]} fused with their '
                  f'bias, {r["folded"]} LayerScales folded; '
                  + (f'{r["packed"]} read at load from {args.model.name} (keep it next to the graph)'
                     if r['packed'] else 'weights stored in the graph'))
    except ValueError as e:  # e.g. a size that is not a multiple of 14
        print(f'gplq_export: error: {e}', file=sys.stderr)
        return 2
    print(f'gplq_export: {path} ({path.stat().st_size / 1e6:.1f} MB, input {args.size[0]}x{args.size[1]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
