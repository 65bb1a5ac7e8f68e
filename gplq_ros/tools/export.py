"""gplq_export: write the ONNX graph the onboard engine runs, for one input size.

``--fp32``: the FP32 backbone (the monitor's reference). ``--model ARTIFACT``: the GPLQ
model, activations as QuantizeLinear/DequantizeLinear pairs with the artifact's own
scales and zero-points (a Clip keeps sub-8-bit codes in range), weights as their
dequantized 4-bit grid values; layers with one scale per output channel then get int8
code initializers + a per-channel DequantizeLinear, which ONNX Runtime runs as integer
MatMuls (``runtime.export.integer_weights``).
"""
import argparse
import sys
from pathlib import Path

from .common import cli


@cli('gplq_export')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_export', description=__doc__.split('\n\n')[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument('--fp32', action='store_true', help='export the FP32 backbone')
    src.add_argument('--model', type=Path, help='GPLQ artifact to export')
    ap.add_argument('--weights', type=Path, default=None, help='FP32 weights (with --fp32)')
    ap.add_argument('--size', type=int, nargs=2, default=[168, 224], metavar=('H', 'W'),
                    help='network input size, multiples of 14 (default 168 224: 640x480 cameras)')
    ap.add_argument('--out', type=Path, required=True)
    ap.add_argument('--force', action='store_true')
    args = ap.parse_args(argv)
    from ..runtime.artifact import load_artifact
    from ..runtime.export import export_onnx, fuse_integer_linears, integer_weights
    try:
        if args.fp32:
            from ..model.backbone import load_extractor
            path = export_onnx(load_extractor(args.weights), args.out, tuple(args.size), kind='fp32',
                               force=args.force)
        else:
            from ..runtime.fakequant import fakequant_model
            qm, meta = fakequant_model(args.model)
            for q in qm.quantizers.values():
                q.freeze()
            path = export_onnx(qm.extractor, args.out, tuple(args.size), kind='gplq', force=args.force,
                               extra_meta={'artifact_checksum': meta['checksum'], 'tag': meta['tag']})
            tensors, _ = load_artifact(args.model)
            n = integer_weights(path, tensors, meta['layers'])
            fused, folded = fuse_integer_linears(path)
            print(f'gplq_export: {n} of {len(meta["layers"])} layers as int8 weights '
                  f'(per-output-channel layers; per-group layers stay float); {fused} fused with their '
                  f'bias, {folded} LayerScales folded')
    except ValueError as e:  # e.g. a size that is not a multiple of 14
        print(f'gplq_export: error: {e}', file=sys.stderr)
        return 2
    print(f'gplq_export: {path} ({path.stat().st_size / 1e6:.1f} MB, input {args.size[0]}x{args.size[1]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
