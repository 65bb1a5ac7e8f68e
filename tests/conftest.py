"""Shared fixtures: real assets (fetched/verified once per cache), the real extractor,
and ROS 2 environment isolation (random ROS_DOMAIN_ID per test run, loopback only)."""
import os
import random
import sys

import pytest

# Before anything imports rclpy: isolate this run's DDS traffic.
os.environ['ROS_DOMAIN_ID'] = str(random.SystemRandom().randint(1, 101))
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('AMENT_PREFIX_PATH', sys.prefix)
# The graph's shared-memory Fast DDS profile, for this process and the nodes it starts.
from gplq_ros.bringup.description import environment  # noqa: E402  (no rclpy import)
for _k, _v in environment().items():
    os.environ.setdefault(_k, _v)

# The fast loop (`make test-fast`: pytest -m "not slow"): a test is slow when it uses the real model or
# graph fixtures below (torch, ONNX export, calibration, a map build: minutes once per run) or lives in a
# module that starts real ROS 2 processes; tests slow for their own work carry @pytest.mark.slow.
SLOW_FIXTURES = frozenset({'extractor', 'vocab', 'w4a8_artifact', 'packed_graph', 'fp32_graph', 'vocab_file',
                           'place_map'})
SLOW_MODULES = frozenset({'test_nodes', 'test_launch', 'test_ros_pubsub'})


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: real model, graph, map or ROS 2 processes, or seconds of work of '
                            'its own; the fast loop leaves it out (make test-fast)')


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = getattr(getattr(item, 'module', None), '__name__', '')
        if SLOW_FIXTURES & set(getattr(item, 'fixturenames', ())) or module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope='session')
def manifest():
    from gplq_ros.onboard.paths import gplq_home
    from gplq_ros.offline.asset_store import ensure_assets
    return ensure_assets(gplq_home())


@pytest.fixture(scope='session')
def image_paths(manifest):
    from gplq_ros.offline.data import list_images
    return list_images([manifest['images']['dir']])


@pytest.fixture(scope='session')
def images(image_paths):
    from gplq_ros.offline.data import load_images
    return dict(zip([p.name for p in image_paths], load_images(image_paths)))


@pytest.fixture(scope='session')
def extractor(manifest):
    import torch
    torch.set_num_threads(2)
    from gplq_ros.offline.backbone import load_extractor
    return load_extractor(manifest['weights']['path'])


@pytest.fixture(scope='session')
def vocab(extractor, images):
    from gplq_ros.offline.api import build_vocabulary
    return build_vocabulary(extractor, list(images.values()), k=32, crops=4, seed=0)


@pytest.fixture(scope='session')
def w4a8_artifact(manifest, tmp_path_factory):
    """A real (tiny: 4 crops) W4A8 per-output-channel GPLQ artifact made by gplq_calibrate."""
    from helpers.cli import run_module
    out = tmp_path_factory.mktemp('artifact') / 'w4a8.safetensors'
    res = run_module('gplq_ros.tools.calibrate', '--bits', 'w4a8', '--group-size', 0, '--crops', 4, '--batch', 2,
                     '--gptq-crops', 4, '--no-report', '--out', out)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture(scope='session')
def packed_graph(w4a8_artifact):
    """The artifact exported for 640x480 cameras (168x224), weights read from the artifact."""
    from gplq_ros.offline.onnx_export import export_artifact
    return export_artifact(w4a8_artifact, w4a8_artifact.with_name('w4a8_168x224.onnx'), (168, 224))['path']


@pytest.fixture(scope='session')
def fp32_graph(extractor, tmp_path_factory):
    """The FP32 reference graph for 640x480 cameras (168x224)."""
    from gplq_ros.offline.onnx_export import export_onnx
    return export_onnx(extractor, tmp_path_factory.mktemp('fp32') / 'fp32_168x224.onnx', (168, 224))


@pytest.fixture(scope='session')
def vocab_file(vocab, tmp_path_factory):
    path = tmp_path_factory.mktemp('vocab') / 'vocab.safetensors'
    vocab.save(path)
    return path


@pytest.fixture(scope='session')
def place_map(fp32_graph, vocab_file, manifest, tmp_path_factory):
    """A coarse real place map (16 m grid, 4 headings, 40 m) of the flight simulator's
    orthophoto made by gplq_map with the FP32 graph; geo-referenced as UTM 12N with an
    origin for the test (the crop's true offset in its NEON tile is not recorded)."""
    from helpers.cli import run_module
    from gplq_ros.onboard.flight import DEFAULT_ORTHO
    out = tmp_path_factory.mktemp('map') / 'map.safetensors'
    res = run_module('gplq_ros.tools.map', os.path.join(manifest['images']['dir'], DEFAULT_ORTHO), '--out', out,
                     '--gsd', 0.1, '--stride', 16, '--headings', 4, '--heights', 40, '--reference-model', fp32_graph,
                     '--vocabulary', vocab_file, '--utm-zone', '12N', '--utm-origin', 528000, 4978250,
                     '--workers', 0)   # in this process: Ray's start costs more than it gains for 480 tiles
    assert res.returncode == 0, res.stderr[-3000:]
    return out
