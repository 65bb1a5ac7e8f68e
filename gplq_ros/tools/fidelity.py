"""gplq_fidelity: compare a GPLQ artifact with the FP32 model on images it was not
calibrated on.

Per image (whole, plus ``--views`` random crops/flips/rotations): final and per-layer
patch-token cosine, final-token MSE, boundary-map SSIM (patch grid), corner repeatability
(fraction of FP32 top-k corners with a quantized corner within 1 patch) and VLAD
descriptor cosine (same vocabulary for both); over all views, ``descriptor_top1``: the
fraction of quantized descriptors whose nearest FP32 descriptor is their own view's.
Prints means/minima; ``--json F`` writes all.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

from ..gplq.metrics import corner_repeatability, ssim, token_cosine
from ..model.pipeline import PipelineConfig, run_heads
from ..model.preprocess import prepare
from ..paths import default_images_dir, default_vocab
from .common import cli, list_images, load_images, random_views

HELDOUT_PREFIXES = ('OSBS_', 'SOAP_')  # NEON tiles from other sites than the calibration set
METRICS = ('final_cosine', 'output_mse', 'boundary_ssim', 'corner_repeatability', 'descriptor_cosine')


def default_heldout() -> List[Path]:
    return [p for p in list_images([default_images_dir()]) if p.name.startswith(HELDOUT_PREFIXES)]


def compare(ext, qm, image: np.ndarray, cfg: PipelineConfig, centers) -> Dict[str, object]:
    import torch
    prep = prepare(image, cfg.long_side)
    x = torch.from_numpy(prep.tensor)
    vkey = (cfg.vlad_block, cfg.vlad_facet)
    with torch.inference_mode():
        fl, ql = ext.block_tokens(x), qm.block_tokens(x)
        fv, qv = ext(x, [vkey])[vkey], qm(x, [vkey])[vkey]
    fo = run_heads(cfg, prep, fl[-1][0].numpy(), fv[0].numpy(), centers)
    qo = run_heads(cfg, prep, ql[-1][0].numpy(), qv[0].numpy(), centers)
    per_layer = [token_cosine(a[0].numpy(), b[0].numpy()) for a, b in zip(fl, ql)]
    return {
        'final_cosine': per_layer[-1],
        'per_layer_cosine': per_layer,
        'output_mse': float(np.mean((fo.tokens - qo.tokens) ** 2)),
        'boundary_ssim': ssim(fo.boundary, qo.boundary),
        'corner_repeatability': corner_repeatability(fo.corners, qo.corners, radius=1),
        'descriptor_cosine': float(fo.descriptor @ qo.descriptor) if centers is not None else None,
        'fp': fo, 'q': qo,
    }


def evaluate(ext, qm, images: Dict[str, np.ndarray], cfg: PipelineConfig, centers,
             views: int = 4, seed: int = 1, whole: Dict[str, dict] = None) -> Dict[str, object]:
    """Metrics over every view; ``whole``, if given, receives each whole image's full
    ``compare`` result (FP32 and quantized outputs included) for pictures."""
    rng = np.random.default_rng(seed)
    rows, fp_desc, q_desc = [], [], []
    for name, img in images.items():
        for v, view in enumerate([img] + random_views(img, views, rng)):
            r = compare(ext, qm, view, cfg, centers)
            if v == 0 and whole is not None:
                whole[name] = r
            if centers is not None:
                fp_desc.append(r['fp'].descriptor)
                q_desc.append(r['q'].descriptor)
            r = {k: val for k, val in r.items() if k not in ('fp', 'q')}
            rows.append(dict(r, image=name, view=v))
    summary = {}
    for m in METRICS + ('per_layer_cosine',):
        vals = np.array([r[m] for r in rows if r[m] is not None], dtype=np.float64)
        if vals.size:
            summary[m] = {'mean': vals.mean(0).round(6).tolist(), 'min': vals.min(0).round(6).tolist()}
    if len(fp_desc) > 1:
        # place recognition as used: does each quantized descriptor find its own view's FP32
        # descriptor first among all evaluated views (an FP32 map, quantized queries)?
        sim = np.stack(q_desc) @ np.stack(fp_desc).T
        hit = float(np.mean(np.argmax(sim, axis=1) == np.arange(len(sim))))
        summary['descriptor_top1'] = {'mean': hit, 'min': hit}
    return {'summary': summary, 'rows': rows, 'n': len(rows)}


@cli('gplq_fidelity')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_fidelity', description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', type=Path, required=True, help='GPLQ artifact (.safetensors)')
    ap.add_argument('--images', nargs='+', default=None,
                    help='dirs/files not used in calibration (default: the NEON OSBS/SOAP tiles)')
    ap.add_argument('--weights', type=Path, default=None, help='FP32 reference weights')
    ap.add_argument('--vocab', type=Path, default=None, help=f'default {default_vocab()}')
    ap.add_argument('--views', type=int, default=4, help='random crops per image besides the whole (default 4)')
    ap.add_argument('--long-side', type=int, default=224)
    ap.add_argument('--json', type=Path, default=None, help='write all figures here')
    args = ap.parse_args(argv)
    from ..model.backbone import load_extractor
    from ..model.vocab import Vocabulary
    from ..model.weights import sha256_file
    from ..runtime.fakequant import fakequant_model
    ext = load_extractor(args.weights)
    qm, meta = fakequant_model(args.model, ext.weights_sha256)
    vocab = Vocabulary.load(args.vocab or default_vocab(), ext.weights_sha256)
    paths = list_images(args.images) if args.images else default_heldout()
    used = {i['sha256'] for i in meta.get('data', {}).get('images', [])}
    for p in paths:
        if sha256_file(p) in used:
            print(f'gplq_fidelity: warning: {p.name} was used in calibration', file=sys.stderr)
    res = evaluate(ext, qm, dict(zip([p.name for p in paths], load_images(paths))),
                   PipelineConfig(long_side=args.long_side), vocab.centers, args.views)
    res['artifact'] = str(args.model)
    res['bits'] = meta['spec']
    print(f'{args.model}: {meta["tag"]}, {res["n"]} views of {len(paths)} held-out images')
    for m in METRICS + ('descriptor_top1',):
        if m in res['summary']:
            s = res['summary'][m]
            print(f'  {m:22s} mean {s["mean"]:.4f}  min {s["min"]:.4f}')
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
