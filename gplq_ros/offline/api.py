"""The offline tool's Python API; the console scripts are argparse over these calls.

Shaped like torchao's ``quantize_(model, config)``: validated, versioned configs in, one
call per job::

    from gplq_ros.offline import api
    ext = api.load_extractor()
    cal = api.calibrate(ext, QuantSpec(), CalibConfig(crops=64), api.make_crops(images, 64, 0))
    # stages off by default are sub-configs: CalibConfig(rounding=RoundingConfig(iters=400)),
    # or by their option names: CalibConfig.from_options(crops=64, rounding_iters=400)
    cal.artifact().save('w4a8.safetensors')
    api.export('w4a8.safetensors', 'w4a8_168x224.onnx')        # the onboard graph
    engine = api.load_engine('w4a8_168x224.onnx')                 # onboard: no torch needed

``calibrate_to_file`` is the whole ``gplq_calibrate`` job (data, calibration, held-out
report, artifact). Every call leaves the quantizer switches of the models it is given as
it found them, except ``calibrate``, whose returned model has activations and weights
quantized.
"""
import hashlib
import json
import os
import resource
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch

from gplq_ros.offline.alignment import gradient_alignment
from gplq_ros.offline.backbone import load_extractor
from gplq_ros.offline.calibration import batches_of, model_device, stage1
from gplq_ros.offline.compensation import fit_compensation
from gplq_ros.offline.qat import qat
from gplq_ros.offline.rounding import refine_rounding
from gplq_ros.offline.config import CalibConfig, MixedPrecisionConfig, RoundingConfig, WeightsConfig
from gplq_ros.offline.data import (CROP_POLICY, DRONE_POLICY, default_calibration_images, default_heldout, list_images,
                                   load_images, make_crops, random_views)
from gplq_ros.offline.fakequant import export_tensors, fakequant_model
from gplq_ros.offline.evaluation import METRICS, evaluate
from gplq_ros.offline.onnx_export import export_artifact, export_onnx
from gplq_ros.offline.quantized import QuantDinoV2
from gplq_ros.offline.report import heldout_pictures, write_report_png
from gplq_ros.offline.spec import QuantSpec
from gplq_ros.offline.mixed_precision import choose_8bit, layer_sensitivity
from gplq_ros.offline.progress import Budget, ProgressFn, ProgressLog
from gplq_ros.offline.weight_ptq import basin_drift, collect_hessians, correct_biases, quantize_layer, stage2
from gplq_ros.onboard.artifact import read_meta, save_artifact
from gplq_ros.onboard.engine import graph_meta, load as load_engine
from gplq_ros.onboard.fileformat import BACKBONE_ID, sha256_file
from gplq_ros.onboard.paths import (ONBOARD_ARTIFACTS, default_onboard_artifact, default_onboard_models, default_vocab,
                                    default_weights, gplq_home)
from gplq_ros.onboard.pipeline import PipelineConfig
from gplq_ros.onboard.preprocess import ONBOARD_INPUT_HW, prepare
from gplq_ros.onboard.vocabulary import VocabMeta, Vocabulary, spherical_kmeans

__all__ = ['Artifact', 'Calibrated', 'CalibrationJob', 'calibrate', 'calibrate_to_file', 'evaluate',
           'fidelity_report', 'export', 'export_fp32', 'ensure_onboard_models', 'build_vocabulary',
           'vocabulary_to_file', 'check_vocabulary', 'load_extractor', 'load_engine', 'make_crops', 'ProgressLog']


@dataclass
class Artifact:
    """Artifact tensors and metadata (``onboard.artifact`` describes the format)."""
    tensors: Dict[str, np.ndarray]
    meta: dict

    def save(self, path: Path, force: bool = False) -> str:
        """Write atomically (refuses to overwrite unless ``force``); returns the checksum."""
        return save_artifact(Path(path), self.tensors, self.meta, force=force)


@dataclass
class Calibrated:
    model: QuantDinoV2        # fake-quant model, activations and weights quantized
    spec: QuantSpec           # as applied (enforce_basin may have kept layers at 8 bits)
    config: CalibConfig
    results: dict             # history, basin, alignment, timing_s

    def artifact(self, data: Optional[dict] = None, metrics: Optional[dict] = None) -> Artifact:
        tensors, layout = export_tensors(self.model)
        meta = {'backbone': BACKBONE_ID, 'weights_sha256': self.model.extractor.weights_sha256,
                'tag': self.spec.tag, 'spec': self.spec.to_dict(), 'calibration': self.config.to_dict(),
                'data': data or {}, 'metrics': metrics or {}, 'torch': torch.__version__, **layout}
        return Artifact(tensors, meta)


def resolve_device(name: str) -> str:
    """``CalibConfig.device``, refused if it is 'cuda' and torch sees no CUDA device."""
    if name == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device cuda requested but torch.cuda.is_available() is False')
    return name


def calibrate(extractor, spec: QuantSpec, config: CalibConfig, crops: Sequence[torch.Tensor],
              progress: Optional[ProgressFn] = None, budget: Optional[Budget] = None) -> Calibrated:
    """GPLQ on ``extractor`` (left untouched): stage 1 (activations, weights FP32), stage 2
    (weights), then the basin drift and gradient alignment. ``crops``: normalized
    (1, 3, h, w) tensors (``make_crops``). ``progress(stage, done, total, info)`` hears every
    stage (``offline.progress.ProgressLog`` prints it); ``budget`` (default: one of
    ``config.budget_s`` from now) shortens stage 1 and the learned rounding to fit."""
    torch.manual_seed(config.seed)
    budget = budget or Budget(config.budget_s)
    qm = QuantDinoV2(extractor, spec).to(resolve_device(config.device))
    t0 = time.perf_counter()
    history = stage1(qm, crops, config, progress, budget)
    t1 = time.perf_counter()
    wc, mp, rc, qc, cc = config.weights, config.mixed_precision, config.rounding, config.qat, config.compensation
    hs = collect_hessians(qm, batches_of(crops[:wc.gptq_crops], config.batch, device=model_device(qm)), progress) \
        if spec.weight_method == 'gptq' else None
    basin = stage2(qm, spec, hs, wc.eps_basin, wc.enforce_basin, progress)
    applied = basin.pop('spec')
    mixed = {}
    if mp is not None and spec.weight_bits < 8:
        xs = list(batches_of(crops[:mp.sensitivity_crops], config.batch, device=model_device(qm)))
        keys = PipelineConfig().keys if mp.objective == 'outputs' else None
        sens = layer_sensitivity(qm, xs, progress, keys)
        chosen, curve = choose_8bit(qm, xs, sens, mp.max_8bit_fraction, mp.target_cosine,
                                    lambda name, bits: quantize_layer(qm.linears[name], bits, applied,
                                                                      (hs or {}).get(name)), keys, progress)
        applied = replace(applied, keep_8bit=sorted(set(applied.keep_8bit) | set(chosen)))
        mixed = {'sensitivity': sens, 'chosen': chosen, 'curve': curve}
    qat_history = {}
    if qc is not None:
        qat_history = qat(qm, crops, config, qc.steps, qc.lr, progress)
    rounding = {}
    if rc is not None and spec.weight_bits < 8:
        rounding = refine_rounding(qm, crops[:rc.crops], rc.iters, rc.lr, rc.lambda_, rc.batch, seed=config.seed,
                                   progress=progress, budget=budget, reserve_s=RESERVE_S)
    bias = {}
    if wc.bias_correction:
        bias = correct_biases(qm, batches_of(crops[:wc.bias_crops], config.batch, device=model_device(qm)))
    if mixed or qat_history or rounding:   # the weights changed after stage 2's drift
        basin['drift'] = basin_drift(qm)
    compensation = {}
    if cc is not None:
        compensation = fit_compensation(qm, list(batches_of(crops[:cc.crops], config.batch,
                                                            device=model_device(qm))), cc.rank)
    qm.spec = applied
    t2 = time.perf_counter()
    align = gradient_alignment(qm, crops, batch=min(4, config.batch), batches=config.align_batches)
    align['gamma'] = config.gamma_align
    align['below_gamma'] = sorted(n for n, c in align['per_layer'].items() if c < config.gamma_align)
    qm.cpu().set_modes(act=True, weight=True, comp=True)  # evaluation, report and export run on the CPU
    qm.compensation = {i: tuple(t.cpu() for t in c) for i, c in qm.compensation.items()}
    results = {'history': history, 'basin': basin, 'alignment': align, 'mixed_precision': mixed,
               'rounding': rounding, 'compensation': compensation, 'qat': qat_history, 'bias_correction': bias,
               'timing_s': {'stage1': round(t1 - t0, 1), 'stage2': round(t2 - t1, 1),
                            'alignment': round(time.perf_counter() - t2, 1)}}
    return Calibrated(qm, applied, config, results)


@dataclass
class CalibrationJob:
    """What ``gplq_calibrate`` does: calibrate on images, report on held-out images, save."""
    spec: QuantSpec = field(default_factory=QuantSpec)
    config: CalibConfig = field(default_factory=CalibConfig)
    images: Optional[List[Path]] = None      # None: the cached images except the held-out tiles
    weights: Optional[Path] = None           # None: the gplq_assets weights
    out: Optional[Path] = None               # None: $GPLQ_HOME/artifacts/<tag>_<method>.safetensors
    force: bool = False
    report: bool = True                      # held-out fidelity, report JSON/PNG, pictures
    report_vocab: Optional[Path] = None      # None: the gplq_vocab default, if built

    @property
    def artifact_path(self) -> Path:
        return Path(self.out) if self.out else \
            gplq_home() / 'artifacts' / f'{self.spec.tag}_{self.config.method}.safetensors'


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


HELDOUT_METRICS = METRICS + ('per_layer_cosine', 'descriptor_top1')     # the report's held-out summary
DESCRIPTOR_METRICS = ('descriptor_cosine', 'descriptor_top1')


def report_vocabulary(path: Optional[Path], weights_sha256: str) -> Tuple[Optional[np.ndarray], Dict[str, str]]:
    """The VLAD centres the calibration report measures the descriptor metrics with (``path``,
    else the gplq_vocab default) and ``{metric: why it is absent}``: the descriptor metrics
    when there is no vocabulary (then the report says so instead of leaving them out)."""
    vpath = Path(path) if path else default_vocab()
    if vpath.is_file():
        return Vocabulary.load(vpath, weights_sha256).centers, {}
    why = f'no vocabulary at {vpath} (build one with gplq_vocab, or pass --report-vocab)'
    return None, {m: why for m in DESCRIPTOR_METRICS}


# what each calibration stage counts in its progress lines (offline.progress.ProgressLog)
PROGRESS_UNITS = {'Hessians': 'batches', 'weights': 'layers', 'layer sensitivity': 'layers',
                  '8-bit choice': 'layers tried', 'held-out report': 'images'}
# seconds of a budgeted calibration kept after the learned rounding for what follows (bias
# correction, alignment, held-out report, saving; measured on 2 cores: about 40 s)
RESERVE_S = 45.0


def calibrate_to_file(job: CalibrationJob, progress: Optional[ProgressFn] = None) -> dict:
    """The whole job; returns the report (also written next to the artifact as
    ``<name>.report.json``, with ``<name>.report.png`` and held-out pictures)."""
    out = job.artifact_path
    if out.exists() and not job.force:
        raise FileExistsError(f'{out} exists; pass --force to overwrite it')
    if job.report and job.report_vocab and not Path(job.report_vocab).is_file():
        raise FileNotFoundError(f'--report-vocab {job.report_vocab}: file not found')
    spec, cfg = job.spec, job.config
    t_start = time.perf_counter()
    budget = Budget(cfg.budget_s)
    paths = list_images(job.images) if job.images else default_calibration_images()
    ext = load_extractor(job.weights)
    crops = make_crops(load_images(paths), cfg.crops, cfg.seed, augment=cfg.augment)
    data = {'images': [{'name': p.name, 'sha256': sha256_file(p)} for p in paths],
            'crops': cfg.crops, 'seed': cfg.seed, 'crop_policy': DRONE_POLICY if cfg.augment else CROP_POLICY}
    data['fingerprint'] = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    cal = calibrate(ext, spec, cfg, crops, progress, budget)
    fidelity, pictures = {'summary': {}}, []
    absent = {m: 'not measured (--no-report)' for m in HELDOUT_METRICS}
    if job.report:
        held = default_heldout()
        images = dict(zip([p.name for p in held], load_images(held)))
        centers, absent = report_vocabulary(job.report_vocab, ext.weights_sha256)
        whole = {}
        fidelity = evaluate(ext, cal.model, images, PipelineConfig(long_side=224), centers, views=4, whole=whole,
                            progress=progress)
        if progress:
            progress('held-out report', len(images), len(images), {})
        pictures = heldout_pictures(images, whole, out.parent / (out.stem + '_report'))
    wall = time.perf_counter() - t_start
    res = cal.results
    metrics = {'heldout': fidelity['summary'], 'heldout_absent': absent, 'basin': res['basin'],
               'gradient_alignment': res['alignment'],
               'mixed_precision': res['mixed_precision'], 'rounding': res['rounding'],
               'compensation': res['compensation'], 'bias_correction': res['bias_correction'],
               'budget_s': cfg.budget_s,
               'qat': {'steps': len(res['qat']['total']), 'wall_s': round(res['qat']['wall_s'][0], 1),
                       'loss_first': res['qat']['total'][0], 'loss_last': res['qat']['total'][-1]}
               if res['qat'] else {},
               'timing_s': dict(res['timing_s'], total=round(wall, 1)), 'peak_rss_mb': round(peak_rss_mb(), 1)}
    checksum = cal.artifact(data, metrics).save(out, force=job.force)
    report = {'artifact': str(out), 'checksum': checksum, 'spec': cal.spec.to_dict(),
              'calibration': cfg.to_dict(), 'history': res['history'], 'metrics': metrics, 'pictures': pictures,
              'heldout_rows': fidelity.get('rows', []), 'qat_history': res['qat']}
    out.with_suffix('.report.json').write_text(json.dumps(report, indent=2) + '\n')
    if job.report:
        write_report_png(out.with_suffix('.report.png'), res, fidelity, cal.spec)
    return dict(report, size_mb=out.stat().st_size / 1e6, wall_s=wall)


def fidelity_report(artifact: Path, images: Optional[List[Path]] = None, weights: Optional[Path] = None,
                    vocab: Optional[Path] = None, views: int = 4, long_side: int = 224) -> dict:
    """``gplq_fidelity``: the artifact's fake-quant model vs FP32 on held-out images;
    ``used_in_calibration`` names given images that the artifact was calibrated on."""
    ext = load_extractor(weights)
    qm, meta = fakequant_model(artifact, ext.weights_sha256)
    centers = Vocabulary.load(vocab or default_vocab(), ext.weights_sha256).centers
    paths = list_images(images) if images else default_heldout()
    used = {i['sha256'] for i in meta.get('data', {}).get('images', [])}
    res = evaluate(ext, qm, dict(zip([p.name for p in paths], load_images(paths))),
                   PipelineConfig(long_side=long_side), centers, views)
    return dict(res, artifact=str(artifact), bits=meta['spec'], tag=meta['tag'], images=len(paths),
                used_in_calibration=[p.name for p in paths if sha256_file(p) in used])


def export(artifact: Path, out: Path, input_hw: Tuple[int, int] = ONBOARD_INPUT_HW, packed: bool = True,
           force: bool = False, cfg: PipelineConfig = PipelineConfig(), expect_weights_sha256: str = None) -> dict:
    """The onboard ONNX graph of a GPLQ artifact (see ``offline.onnx_export.export_artifact``)."""
    return export_artifact(Path(artifact), Path(out), tuple(input_hw), cfg, packed=packed, force=force,
                           expect_weights_sha256=expect_weights_sha256)


def export_fp32(extractor, out: Path, input_hw: Tuple[int, int] = ONBOARD_INPUT_HW, force: bool = False,
                cfg: PipelineConfig = PipelineConfig()) -> Path:
    """The FP32 graph (the monitor's reference)."""
    return export_onnx(extractor, Path(out), tuple(input_hw), cfg, kind='fp32', force=force)


# The onboard form ``make demo`` uses: W4A8 on int8 kernels, >= 75 % of the Linear weights in
# 4 bits; the rotated residual stream and the int8 q.k^T attention (float attention x V)
# were chosen on the held-out tiles of the calibration sources (gplq_fidelity) and on
# OpenVINO speed, then measured on unseen sources (docs/benchmarks.md).
# 'fast' (the default, #21): 4-bit codes on the multiplier grid (offline.grids; decoded into
# int8 weights), GPTQ with the Hessian-weighted clip search, 64 drone-like stage-1 crops,
# 8-bit layers chosen by the cosine of both graph outputs, bias correction, within a
# 5-minute budget on 2 CPU cores
# (recipe chosen by measured held-out fidelity per minute of calibration: docs/benchmarks.md).
ONBOARD_SPEC = QuantSpec(weight_bits=4, act_bits=8, group_size=None, act_order=True, rotation='orthogonal',
                         attention='qk_int8', weight_grid='multiplier', grid_group=32)
# Drone-like crops (augment) and choosing the 8-bit layers by both outputs gave the largest
# gains; bias correction is cheap (seconds) and kept with them as measured; no learned
# rounding: 100 steps per block alone took over 5 minutes here (docs/benchmarks.md).
ONBOARD_CALIBRATION = CalibConfig(crops=64, augment=True, budget_s=300.0, weights=WeightsConfig(bias_correction=True),
                                  mixed_precision=MixedPrecisionConfig(max_8bit_fraction=0.25, sensitivity_crops=8,
                                                                       objective='outputs'))
# with CUDA: the same recipe on the GPU (not measured there yet)
ONBOARD_CALIBRATION_CUDA = replace(ONBOARD_CALIBRATION, device='cuda')
# 'best' (the default before #21, one option away: --calibration best): uniform per-channel
# grid, 256 stage-1 crops, learned rounding 400 steps per block (about 20 minutes on 2 cores)
BEST_SPEC = QuantSpec(weight_bits=4, act_bits=8, group_size=None, act_order=True, rotation='orthogonal',
                      attention='qk_int8')
BEST_CALIBRATION = CalibConfig(mixed_precision=MixedPrecisionConfig(max_8bit_fraction=0.25),
                               rounding=RoundingConfig(iters=400, batch=4, crops=64))
BEST_CALIBRATION_CUDA = replace(BEST_CALIBRATION, device='cuda',
                                rounding=RoundingConfig(iters=2000, batch=32, crops=128))


@dataclass(frozen=True)
class OnboardRecipe:
    """A calibration ``make demo`` can make the onboard artifact with (``--calibration``)."""
    spec: QuantSpec
    cpu: CalibConfig
    cuda: CalibConfig
    about: str          # what it is and how long it takes, for the log


ONBOARD_RECIPES = {
    'fast': OnboardRecipe(ONBOARD_SPEC, ONBOARD_CALIBRATION, ONBOARD_CALIBRATION_CUDA,
                          '4-bit multiplier grid, Hessian clip search, drone-like crops, 25 % 8-bit chosen by both '
                          'outputs, bias correction: within a 5-minute budget on 2 CPU cores'),
    'best': OnboardRecipe(BEST_SPEC, BEST_CALIBRATION, BEST_CALIBRATION_CUDA,
                          'uniform 4-bit grid, 25 % 8-bit, learned rounding 400 steps per block: about 20 minutes '
                          'on 2 CPU cores'),
}
assert set(ONBOARD_RECIPES) == set(ONBOARD_ARTIFACTS)


def ensure_onboard_models(log: Callable[[str], None] = print, recipe: str = 'fast',
                          progress: Optional[ProgressFn] = None) -> Dict[str, str]:
    """The W4A8 artifact of ``recipe`` (``ONBOARD_RECIPES``; calibrated if missing, with
    ``progress`` lines, by default a ``ProgressLog`` writing to ``log``) and both onboard graphs (exported if
    missing or not made from that artifact), where the bringup looks for them."""
    if recipe not in ONBOARD_RECIPES:
        raise ValueError(f'recipe={recipe!r}: one of {sorted(ONBOARD_RECIPES)}')
    models = default_onboard_models()
    graph_path, fp32_path = Path(models['model']), Path(models['reference_model'])
    art = default_onboard_artifact(recipe)
    if not art.is_file():
        r = ONBOARD_RECIPES[recipe]
        cuda = torch.cuda.is_available()
        cfg = r.cuda if cuda else r.cpu
        log(f'calibrating {art} ({recipe}: {r.about}' + ('; on CUDA)' if cuda else ')'))
        calibrate_to_file(CalibrationJob(r.spec, cfg, out=art),
                          progress or ProgressLog(f'calibration ({recipe})', emit=log, units=PROGRESS_UNITS))
    checksum = read_meta(art)['checksum']
    stale = True
    if graph_path.is_file():
        stale = (graph_meta(onnx.load(str(graph_path), load_external_data=False)) or {}).get(
            'artifact_checksum') != checksum
    if stale:
        export(art, graph_path, force=True)
        log(f'exported {graph_path}')
    if not fp32_path.is_file():
        export_fp32(load_extractor(), fp32_path)
        log(f'exported {fp32_path}')
    return models


def build_vocabulary(extractor, images: Sequence[np.ndarray], k: int = 32, block: int = 9, facet: str = 'value',
                     long_side: int = 224, crops: int = 8, seed: int = 0, names=None) -> Vocabulary:
    """Spherical k-means over the patch features (block, facet) of each image whole plus
    ``crops`` random views."""
    rng = np.random.default_rng(seed)
    feats = []
    with torch.inference_mode():
        for img in images:
            for view in [img] + random_views(img, crops, rng):
                x = torch.from_numpy(prepare(view, long_side).tensor)
                feats.append(extractor(x, [(block, facet)])[(block, facet)][0].numpy())
    x = np.concatenate(feats)
    meta = VocabMeta(backbone=BACKBONE_ID, weights_sha256=extractor.weights_sha256, block=block, facet=facet,
                     long_side=long_side, k=k, seed=seed, n_features=int(x.shape[0]), images=list(names or []))
    return Vocabulary(spherical_kmeans(x, k, seed=seed), meta)


def vocabulary_to_file(out: Optional[Path] = None, images: Optional[List[Path]] = None,
                       weights: Optional[Path] = None, force: bool = False, **kw) -> Tuple[Vocabulary, Path]:
    """``gplq_vocab``: build from the images (default: the cached aerial images) and save."""
    out = Path(out) if out else default_vocab()
    if out.exists() and not force:
        raise FileExistsError(f'{out} exists; pass --force to rebuild it')
    if os.environ.get('OMP_NUM_THREADS'):   # respect it if set; torch's default otherwise
        torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    paths = list_images(images)
    ext = load_extractor(weights)
    names = [{'name': p.name, 'sha256': sha256_file(p)} for p in paths]
    voc = build_vocabulary(ext, load_images(paths), names=names, **kw)
    voc.save(out, force=force)
    return voc, out


def check_vocabulary(out: Optional[Path] = None, weights: Optional[Path] = None) -> Vocabulary:
    """The existing vocabulary, refused unless built with these weights."""
    return Vocabulary.load(Path(out) if out else default_vocab(), sha256_file(weights or default_weights()))
