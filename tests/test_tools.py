"""gplq_vocab and gplq_demo end to end on real images."""
import json

import cv2
import pytest
from helpers.cli import run_module as run
from helpers.cli import run_modules


@pytest.fixture(scope='module')
def three_images(image_paths):
    return [p for p in image_paths if p.name.startswith(('OSBS', 'SOAP'))]


@pytest.mark.slow
def test_vocab_then_demo(three_images, tmp_path, manifest):
    vocab = tmp_path / 'v.safetensors'
    res = run('gplq_ros.tools.vocab', '--images', *three_images, '--k', 8, '--crops', 2, '--out', vocab)
    assert res.returncode == 0, res.stderr
    meta = json.loads(vocab.with_suffix('.json').read_text())
    assert meta['k'] == 8 and meta['block'] == 9 and meta['facet'] == 'value'
    assert meta['weights_sha256'] == manifest['weights']['sha256']
    assert meta['n_features'] == 3 * 3 * 256  # whole image + 2 crops, 16x16 patches each

    out = tmp_path / 'demo'
    again, reuse, res = run_modules(           # never overwritten silently; --if-missing reuses it
        ('gplq_ros.tools.vocab', '--images', *three_images, '--k', 8, '--out', vocab),
        ('gplq_ros.tools.vocab', '--if-missing', '--out', vocab),
        ('gplq_ros.tools.demo', '--images', *three_images, '--vocab', vocab, '--long-side', 224, '--out', out))
    assert again.returncode == 1 and '--force' in again.stderr
    assert reuse.returncode == 0 and 'existing' in reuse.stdout
    assert res.returncode == 0, res.stderr
    for p in three_images:
        pic = cv2.imread(str(out / (p.stem + '.png')))
        assert pic is not None and pic.shape[0] == 360 and pic.shape[1] > 4 * 360
    summary = json.loads((out / 'similarity.json').read_text())
    assert len(summary['similarity']) == 3 and summary['min_flip_cosine'] > 0
    assert cv2.imread(str(out / 'similarity.png')) is not None


@pytest.mark.slow
def test_demo_without_vocabulary_says_how_to_build_it(tmp_path, three_images):
    res = run('gplq_ros.tools.demo', '--images', three_images[0], '--vocab', tmp_path / 'none.safetensors',
              '--out', tmp_path / 'd')
    assert res.returncode == 2 and 'gplq_vocab' in res.stderr


@pytest.mark.slow
def test_bad_images_argument(tmp_path):
    res = run('gplq_ros.tools.vocab', '--images', tmp_path / 'nowhere', '--out', tmp_path / 'v.safetensors')
    assert res.returncode == 2 and 'nowhere' in res.stderr
