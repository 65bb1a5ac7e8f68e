"""gplq_calibrate: GPLQ calibration of DINOv2-S/14 -> versioned artifact + report.

Stage 1 learns activation quantizers (weights FP32, frozen) on random 224 px crops of real
images; stage 2 quantizes the weights (GPTQ or round-to-nearest, MSE-clipped scales);
then the basin drift, gradient alignment and held-out fidelity are measured and written
into the artifact's metadata and a report (JSON + PNG) next to it.
"""
import argparse
import hashlib
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from ..gplq.config import CalibConfig, resolve_device
from ..paths import default_images_dir, gplq_home
from ..quant.spec import QuantSpec
from .common import cli, list_images, load_images, random_views
from .fidelity import HELDOUT_PREFIXES


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def default_calibration_images():
    return [p for p in list_images([default_images_dir()]) if not p.name.startswith(HELDOUT_PREFIXES)]


def make_crops(images, n: int, seed: int, size: int = 224):
    """n random square crops (30-70 % of the short side, flips, 90-degree rotations),
    taken round-robin over the images, each resized to size x size."""
    import torch

    from ..model.preprocess import prepare
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        view = random_views(images[i % len(images)], 1, rng)[0]
        out.append(torch.from_numpy(prepare(view, size=(size, size)).tensor))
    return out


def calibrate(ext, spec: QuantSpec, cfg: CalibConfig, crops, progress=None):
    """Both stages, basin and alignment; returns (qm, results)."""
    import torch

    from ..gplq.calibrate import batches_of, model_device, stage1
    from ..gplq.metrics import gradient_alignment
    from ..gplq.weight_ptq import collect_hessians, stage2
    from ..model.quantized import QuantDinoV2
    torch.manual_seed(cfg.seed)
    qm = QuantDinoV2(ext, spec).to(cfg.device)
    t0 = time.perf_counter()
    history = stage1(qm, crops, cfg, progress)
    t1 = time.perf_counter()
    hs = collect_hessians(qm, batches_of(crops[:cfg.gptq_crops], cfg.batch, device=model_device(qm))) \
        if spec.weight_method == 'gptq' else None
    basin = stage2(qm, spec, hs, cfg.eps_basin, cfg.enforce_basin)
    t2 = time.perf_counter()
    align = gradient_alignment(qm, crops, batch=min(4, cfg.batch), batches=cfg.align_batches)
    align['gamma'] = cfg.gamma_align
    align['below_gamma'] = sorted(n for n, c in align['per_layer'].items() if c < cfg.gamma_align)
    qm.cpu()  # evaluation, report and export run on the CPU
    results = {'history': history, 'basin': basin, 'alignment': align,
               'timing_s': {'stage1': round(t1 - t0, 1), 'stage2': round(t2 - t1, 1),
                            'alignment': round(time.perf_counter() - t2, 1)}}
    return qm, results


def write_report_png(path: Path, results: dict, fidelity: dict, spec: QuantSpec) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(2, 2, figsize=(13, 8))
    hist = {k: v for k, v in results['history'].items() if k not in ('wall_s', 'pca_components')}
    for k, v in hist.items():
        ax[0, 0].plot(v, label=k)
    ax[0, 0].set_yscale('log')
    ax[0, 0].set_title('stage 1 loss per term' if hist else 'stage 1: no learning (method without GPLQ)')
    ax[0, 0].set_xlabel('step')
    if hist:
        ax[0, 0].legend()
    pl = fidelity['summary'].get('per_layer_cosine')
    if pl:
        ax[0, 1].plot(range(len(pl['mean'])), pl['mean'], 'o-', label='mean')
        ax[0, 1].plot(range(len(pl['min'])), pl['min'], 'x--', label='min')
        ax[0, 1].legend()
    ax[0, 1].set_title('held-out activation cosine per block (FP32 vs quantized)')
    ax[0, 1].set_xlabel('block')
    drift = {k: v for k, v in results['basin']['drift'].items() if k != 'overall'}
    ax[1, 0].bar(range(len(drift)), list(drift.values()))
    ax[1, 0].axhline(results['basin']['eps_basin'], color='r', ls='--', label='eps_basin')
    ax[1, 0].set_title(f'basin drift ||Wq-W||/||W|| per Linear (overall {results["basin"]["drift"]["overall"]:.3f})')
    ax[1, 0].legend()
    al = results['alignment']
    ax[1, 1].bar(range(len(al['per_layer'])), list(al['per_layer'].values()))
    ax[1, 1].axhline(al['gamma'], color='r', ls='--', label='gamma')
    ax[1, 1].set_title(f'gradient alignment per Linear (overall {al["overall"]:.3f})')
    ax[1, 1].legend()
    for a in (ax[1, 0], ax[1, 1]):
        a.set_xlabel('Linear (block-major: qkv, proj, fc1, fc2)')
    fig.suptitle(f'GPLQ {spec.tag} report')
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def heldout_pictures(images: dict, whole: dict, out_dir: Path) -> list:
    """input | FP32 boundary + corners | quantized boundary + corners, per whole image."""
    import cv2

    from .common import tile
    from .demo import draw_boundary_corners
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, img in images.items():
        r = whole[name]
        pic = tile([img, draw_boundary_corners(img, r['fp'], 'FP32'),
                    draw_boundary_corners(img, r['q'], f'quantized (SSIM {r["boundary_ssim"]:.3f})')], 300)
        dest = out_dir / (Path(name).stem + '.png')
        cv2.imwrite(str(dest), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
        paths.append(str(dest))
    return paths


@cli('gplq_calibrate')
def main(argv=None) -> int:
    d = CalibConfig()
    ap = argparse.ArgumentParser(prog='gplq_calibrate', description=__doc__.split('\n\n')[0])
    ap.add_argument('--images', nargs='+', default=None,
                    help='dirs/files (default: cached aerial images except the held-out OSBS/SOAP tiles)')
    ap.add_argument('--weights', type=Path, default=None)
    ap.add_argument('--bits', default='w4a8', help='wXaY, e.g. w4a8, w4a4, w8a8 (default w4a8)')
    ap.add_argument('--attn-bits', type=int, default=8, help='bits of q, k, v, softmax (default 8)')
    ap.add_argument('--act-granularity', choices=['tensor', 'channel'], default=None,
                    help='Linear-input quantizers (default: tensor at >= 8 bits, channel below)')
    ap.add_argument('--group-size', type=int, default=32, help='weight group size; 0 = per output channel')
    ap.add_argument('--weight-method', choices=['gptq', 'rtn'], default='gptq')
    ap.add_argument('--weight-clip', choices=['mse', 'minmax'], default='mse')
    ap.add_argument('--exclude', nargs='*', default=[], help='layers kept FP32, e.g. blocks.11.mlp.fc2')
    ap.add_argument('--keep-8bit', nargs='*', default=[], help='layers with 8-bit weights, e.g. blocks.9.attn.qkv')
    ap.add_argument('--method', choices=['gplq', 'minmax', 'percentile'], default=d.method)
    ap.add_argument('--epochs', type=int, default=d.epochs)
    ap.add_argument('--crops', type=int, default=d.crops)
    ap.add_argument('--batch', type=int, default=d.batch)
    ap.add_argument('--lr', type=float, default=d.lr)
    ap.add_argument('--init', choices=['minmax', 'percentile'], default=d.init)
    ap.add_argument('--alpha', choices=['depth', 'uniform'], default=d.alpha)
    ap.add_argument('--beta', type=float, default=d.beta)
    ap.add_argument('--lambda-corner', type=float, default=d.lambda_corner)
    ap.add_argument('--lambda-edge', type=float, default=d.lambda_edge)
    ap.add_argument('--lambda-reg', type=float, default=d.lambda_reg)
    ap.add_argument('--edge-threshold', type=float, default=d.edge_threshold)
    ap.add_argument('--pca-final', action='store_true', help="add GPLQ's PCA-projected final-feature term")
    ap.add_argument('--gptq-crops', type=int, default=d.gptq_crops)
    ap.add_argument('--eps-basin', type=float, default=d.eps_basin)
    ap.add_argument('--enforce-basin', action='store_true', help='layers drifting > eps get 8-bit weights')
    ap.add_argument('--gamma', type=float, default=d.gamma_align, help='gradient-alignment threshold')
    ap.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    ap.add_argument('--seed', type=int, default=d.seed)
    ap.add_argument('--out', type=Path, default=None,
                    help='artifact path (default $GPLQ_HOME/artifacts/<bits>_<method>.safetensors)')
    ap.add_argument('--force', action='store_true', help='overwrite --out')
    ap.add_argument('--no-report', action='store_true', help='skip held-out fidelity, report and pictures')
    ap.add_argument('--report-vocab', type=Path, default=None,
                    help='VLAD vocabulary for the report (default: the gplq_vocab one, if built)')
    args = ap.parse_args(argv)

    spec = QuantSpec.from_bits(args.bits, attn_bits=args.attn_bits, act_granularity=args.act_granularity,
                               group_size=args.group_size or None, weight_method=args.weight_method,
                               weight_clip=args.weight_clip, exclude=list(args.exclude),
                               keep_8bit=list(args.keep_8bit))
    cfg = CalibConfig(method=args.method, epochs=args.epochs, crops=args.crops, batch=args.batch, lr=args.lr,
                      init=args.init, alpha=args.alpha, beta=args.beta, lambda_corner=args.lambda_corner,
                      lambda_edge=args.lambda_edge, lambda_reg=args.lambda_reg,
                      edge_threshold=args.edge_threshold, pca_final=args.pca_final,
                      gptq_crops=args.gptq_crops, seed=args.seed, device=resolve_device(args.device),
                      eps_basin=args.eps_basin, enforce_basin=args.enforce_basin, gamma_align=args.gamma)
    out = args.out or gplq_home() / 'artifacts' / f'{spec.tag}_{cfg.method}.safetensors'
    if out.exists() and not args.force:
        print(f'gplq_calibrate: {out} exists; pass --force to overwrite it', file=sys.stderr)
        return 1
    import torch
    from tqdm import tqdm

    from ..model.backbone import load_extractor
    from ..model.weights import BACKBONE_ID, sha256_file
    from ..runtime.artifact import save_artifact
    from ..runtime.fakequant import export_tensors
    t_start = time.perf_counter()
    paths = list_images(args.images) if args.images else default_calibration_images()
    ext = load_extractor(args.weights)
    crops = make_crops(load_images(paths), cfg.crops, cfg.seed)
    data = {'images': [{'name': p.name, 'sha256': sha256_file(p)} for p in paths],
            'crops': cfg.crops, 'seed': cfg.seed, 'crop_policy': 'square 30-70% of short side, flip, rot90, 224 px'}
    data['fingerprint'] = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    steps = cfg.epochs * -(-cfg.crops // cfg.batch) if cfg.method == 'gplq' else 0
    bar = tqdm(total=steps, desc=f'stage 1 {spec.tag} {cfg.method}', unit='step', disable=steps == 0)

    def progress(step, terms):
        bar.update(1)
        bar.set_postfix({k: f'{v:.4g}' for k, v in terms.items() if k in ('total', 'mimic', 'corner', 'edge')})
    qm, results = calibrate(ext, spec, cfg, crops, progress)
    bar.close()

    fidelity, pictures = {'summary': {}}, []
    if not args.no_report:
        from ..model.pipeline import PipelineConfig
        from ..model.vocab import Vocabulary
        from ..paths import default_vocab
        from .fidelity import default_heldout, evaluate
        held = default_heldout()
        images = dict(zip([p.name for p in held], load_images(held)))
        vpath = args.report_vocab or default_vocab()
        vocab = Vocabulary.load(vpath, ext.weights_sha256) if vpath.is_file() else None
        centers = vocab.centers if vocab is not None else None
        whole = {}
        fidelity = evaluate(ext, qm, images, PipelineConfig(long_side=224), centers, views=4, whole=whole)
        pictures = heldout_pictures(images, whole, out.parent / (out.stem + '_report'))
    wall = time.perf_counter() - t_start
    metrics = {'heldout': fidelity['summary'], 'basin': results['basin'],
               'gradient_alignment': {k: v for k, v in results['alignment'].items()},
               'timing_s': dict(results['timing_s'], total=round(wall, 1)),
               'peak_rss_mb': round(peak_rss_mb(), 1)}
    tensors, layout = export_tensors(qm)
    meta = {'backbone': BACKBONE_ID, 'weights_sha256': ext.weights_sha256, 'tag': spec.tag,
            'spec': spec.to_dict(), 'calibration': cfg.to_dict(), 'data': data, 'metrics': metrics,
            'torch': torch.__version__, **layout}
    checksum = save_artifact(out, tensors, meta, force=args.force)
    report = {'artifact': str(out), 'checksum': checksum, 'spec': spec.to_dict(), 'calibration': cfg.to_dict(),
              'history': results['history'], 'metrics': metrics, 'pictures': pictures,
              'heldout_rows': fidelity.get('rows', [])}
    out.with_suffix('.report.json').write_text(json.dumps(report, indent=2) + '\n')
    if not args.no_report:
        write_report_png(out.with_suffix('.report.png'), results, fidelity, spec)
    al = results['alignment']
    if al['overall'] < cfg.gamma_align or al['below_gamma']:
        print(f'gplq_calibrate: warning: gradient alignment {al["overall"]:.3f} overall; '
              f'{len(al["below_gamma"])} layers below gamma={cfg.gamma_align}', file=sys.stderr)
    if results['basin']['over_eps']:
        print(f'gplq_calibrate: basin: {len(results["basin"]["over_eps"])} layers drift > eps='
              f'{cfg.eps_basin}' + (f'; kept at 8 bits: {results["basin"]["kept_8bit"]}'
                                    if results['basin']['kept_8bit'] else ' (use --enforce-basin)'),
              file=sys.stderr)
    s = fidelity['summary']
    keys = ('final_cosine', 'boundary_ssim', 'corner_repeatability', 'descriptor_cosine')
    fig = ' '.join(f'{k} {s[k]["mean"]:.4f}' for k in keys if k in s)
    print(f'gplq_calibrate: {spec.tag} {cfg.method} -> {out} ({out.stat().st_size / 1e6:.1f} MB) in {wall:.0f} s, '
          f'peak RSS {metrics["peak_rss_mb"]:.0f} MB; drift {results["basin"]["drift"]["overall"]:.3f}, '
          f'alignment {al["overall"]:.3f}; held-out {fig}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
