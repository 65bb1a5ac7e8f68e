"""gplq_calibrate and gplq_fidelity end to end on real images (tiny calibration)."""
import json
from pathlib import Path

import cv2
import pytest
from helpers.cli import run_module as run
from helpers.cli import run_modules


def test_calibrate_report_and_fidelity(tmp_path, manifest, vocab):
    vocab_path = tmp_path / 'vocab.safetensors'
    vocab.save(vocab_path)
    env_vocab = ['--vocab', vocab_path]
    out = tmp_path / 'w4a4.safetensors'
    res = run('gplq_ros.tools.calibrate', '--bits', 'w4a4', '--crops', 4, '--batch', 2, '--gptq-crops', 4,
              '--out', out, '--report-vocab', vocab_path)
    assert res.returncode == 0, res.stderr[-3000:]
    # a progress line for every stage: start and end, with the loss where there is one
    for stage in ('stage 1: 1/2 steps', 'stage 1: 2/2 steps', 'Hessians: 2/2 batches', 'weights: 48/48 layers',
                  'held-out report: 3/3 images'):
        assert f'gplq_calibrate w4a4 gplq: {stage}' in res.stderr, res.stderr[-2000:]
    assert '(loss ' in res.stderr
    assert out.is_file() and out.with_suffix('.report.png').is_file()
    report = json.loads(out.with_suffix('.report.json').read_text())
    m = report['metrics']
    assert set(report['history']) >= {'mimic', 'corner', 'edge', 'reg', 'total'}
    assert len(report['history']['total']) == 2
    assert m['peak_rss_mb'] > 0 and m['timing_s']['total'] > 0
    assert 'overall' in m['basin']['drift'] and 'overall' in m['gradient_alignment']
    assert len(m['heldout']['per_layer_cosine']['mean']) == 12
    assert 0.5 < m['heldout']['final_cosine']['mean'] <= 1.0
    assert m['heldout_absent'] == {} and 'descriptor_cosine' in m['heldout']       # a vocabulary was given
    for pic in report['pictures']:
        assert cv2.imread(pic) is not None
    assert len(report['pictures']) == 3

    held = [p for p in (Path(manifest['images']['dir'])).iterdir() if p.name.startswith('SOAP_061')]
    calib_img = Path(manifest['images']['dir']) / 'AWPE_Pigeon_Lake_2020_DJI_0005.JPG'
    js, bad = tmp_path / 'fid.json', tmp_path / 'bad.safetensors'
    bad.write_bytes(out.read_bytes()[:-50] + b'\0' * 50)
    again, res, calib, broken = run_modules(
        ('gplq_ros.tools.calibrate', '--bits', 'w4a4', '--crops', 4, '--out', out),
        ('gplq_ros.tools.fidelity', '--model', out, '--images', *held, '--views', 1, '--json', js, *env_vocab),
        ('gplq_ros.tools.fidelity', '--model', out, '--images', calib_img, '--views', 0, *env_vocab),
        ('gplq_ros.tools.fidelity', '--model', bad, '--images', *held, *env_vocab))
    assert again.returncode == 1 and '--force' in again.stderr  # never overwritten silently
    assert res.returncode == 0, res.stderr[-3000:]
    fid = json.loads(js.read_text())
    assert fid['n'] == 2
    for k in ('final_cosine', 'output_mse', 'boundary_ssim', 'corner_repeatability', 'descriptor_cosine'):
        assert k in fid['summary'], k
    assert 'final_cosine' in res.stdout
    assert calib.returncode == 0 and 'was used in calibration' in calib.stderr
    assert broken.returncode == 2 and 'checksum mismatch' in broken.stderr


def test_report_says_why_the_descriptor_metrics_are_absent(tmp_path, monkeypatch):
    """Without a vocabulary the calibration report names the descriptor metrics it could not
    measure and why (they used to be left out silently)."""
    import numpy as np

    from gplq_ros.offline.api import report_vocabulary
    from gplq_ros.onboard.vocabulary import VocabMeta, Vocabulary
    monkeypatch.setenv('GPLQ_HOME', str(tmp_path))          # no gplq_vocab default there
    centers, absent = report_vocabulary(None, 'f' * 64)
    assert centers is None and set(absent) == {'descriptor_cosine', 'descriptor_top1'}
    assert all('no vocabulary at' in why and 'gplq_vocab' in why and str(tmp_path) in why for why in absent.values())
    meta = VocabMeta(backbone='dinov2_vits14', weights_sha256='f' * 64, block=9, facet='value', long_side=224, k=4,
                     seed=0, n_features=8)
    Vocabulary(np.eye(4, 384, dtype=np.float32), meta).save(tmp_path / 'vocab' / 'vlad_k32.safetensors')
    centers, absent = report_vocabulary(None, 'f' * 64)
    assert centers.shape == (4, 384) and absent == {}


@pytest.mark.slow
def test_calibrate_refuses_a_missing_report_vocabulary(tmp_path):
    """An explicit --report-vocab that does not exist is an error before any work (it used to
    drop the descriptor metrics silently)."""
    out = tmp_path / 'w.safetensors'
    res = run('gplq_ros.tools.calibrate', '--crops', 4, '--out', out, '--report-vocab', tmp_path / 'none.safetensors')
    assert res.returncode == 2 and 'none.safetensors: file not found' in res.stderr, res.stderr[-2000:]
    assert not out.exists()
