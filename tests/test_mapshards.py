"""Place maps built in shards (issue #20): the sharded build on Ray gives the single-process
map; an interrupted build resumes; a sharded map folder answers the localizer's questions like
the one-file map, under its memory budget; refusals (other weights or vocabulary, a mosaic
without georeference)."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from gplq_ros.onboard.fileformat import BACKBONE_ID
from gplq_ros.onboard.mapshards import BuildConfig, build_sharded
from gplq_ros.onboard.placemap import MapConfig, MapError, MapMeta, build_map

REPO = Path(__file__).resolve().parents[1]
# a 64 m square of the flight's orthophoto, a small camera at 12 m: 8 x 8 places x 2 headings = 128 tiles; 20 m
# shards: 3 x 3 of them; a PCA sample of 40 (the other tiles' descriptors come from the parts)
CFG = MapConfig(width=128, height=96, hfov_deg=70.0, heights_m=(12.0,), stride_m=6.0, headings=2, gsd_m=0.1,
                pca_dim=16, pca_sample=40)
SHARD_M = 20.0


@pytest.fixture(scope='module')
def small_ortho(images, tmp_path_factory):
    import cv2
    from gplq_ros.onboard.flight import DEFAULT_ORTHO
    rgb = images[DEFAULT_ORTHO][800:1440, 900:1540]
    path = tmp_path_factory.mktemp('ortho') / 'small.png'
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path, rgb


@pytest.fixture(scope='module')
def reference(small_ortho, fp32_graph, vocab_file):
    """The single-process map (placemap.build_map: every tile in order, one process), with the
    workers' one intra-op thread: ONNX Runtime's sums in another thread count differ in the last
    bits, and a PCA fitted on 40 tiles turns its last components with them."""
    from gplq_ros.onboard.engine import load
    engine = load(Path(fp32_graph), Path(vocab_file), threads=1)

    def describe(img):
        out = engine(img)
        return out.descriptor, out.boundary
    return build_map(small_ortho[1], describe, CFG, MapMeta(BACKBONE_ID, 'w', 'v', 'g', 's', 'x', [], {}))


@pytest.fixture(scope='module')
def ray_build(small_ortho, fp32_graph, vocab_file, tmp_path_factory):
    out = tmp_path_factory.mktemp('sharded') / 'map'
    spec = [{'path': str(small_ortho[0]), 'gsd_m': CFG.gsd_m, 'georef': None}]
    lines = []
    res = build_sharded(spec, out, Path(fp32_graph), Path(vocab_file), CFG,
                        BuildConfig(shard_m=SHARD_M, workers=2, threads=1), print_fn=lines.append)
    return res, out, lines


def _same_map(a, b, atol=2e-3):
    assert np.array_equal(a.poses, b.poses)
    assert np.abs(a.descriptors - b.descriptors).max() < atol
    assert a.boundary.shape == b.boundary.shape and np.abs(a.boundary - b.boundary).max() < 1e-4
    assert np.allclose(a.pca_mean, b.pca_mean, atol=1e-4)
    # the orthophoto layer: block means of the same pixels, whichever window they were read in (exact)
    assert a.ortho is not None and b.ortho is not None and np.array_equal(a.ortho, b.ortho)


def test_sharded_build_on_ray_equals_the_single_process_map(ray_build, reference):
    res, out, lines = ray_build
    assert res.stats['shards'] == 9 and res.stats['workers'] == 2 and res.stats['computed_tiles'] == 128, res.stats
    assert any('128 tiles in 9 shards' in line and '2 Ray workers' in line for line in lines), lines
    assert 'PCA fitted on 40 of 128 tiles' in res.meta.notes[0]
    _same_map(res.placemap(), reference)


def test_sharded_map_folder_answers_like_the_one_file_map(ray_build, reference, tmp_path):
    from gplq_ros.onboard.mapstore import ShardedMap, WholeMap, write_sharded
    res, _, _ = ray_build
    folder = write_sharded(res, tmp_path / 'folder')
    sm, wm = ShardedMap(folder, memory_mb=64), WholeMap(res.placemap())
    assert len(sm.poses) == 128 and sm.config == CFG
    rng = np.random.default_rng(0)
    for i in rng.choice(128, 12, replace=False):
        q = wm.pmap.descriptors[i] + rng.normal(0, 0.02, CFG.pca_dim).astype(np.float32)
        q /= np.linalg.norm(q)
        ids_s, sc_s = sm.search(q, 8)
        ids_w, sc_w = wm.search(q, 8)
        assert np.array_equal(sm.poses[ids_s[0]], wm.poses[ids_w[0]])       # the same top-1 tile
        assert abs(sc_s[0] - sc_w[0]) < 2e-3                               # float16 rows: <= 2^-11 for unit rows
        near = (wm.poses[i, :2], 9.0)
        ids_s, _ = sm.search(q, 8, near)
        ids_w, _ = wm.search(q, 8, near)
        assert np.array_equal(sm.poses[ids_s[:3]], wm.poses[ids_w[:3]])
        assert np.hypot(*(sm.poses[ids_s, :2] - near[0]).T).max() <= 9.0
    full = wm.pmap.boundary
    win, r0, c0 = sm.boundary_window(30, 50, 90, 128)
    assert (r0, c0) == (30, 50) and np.abs(win - full[30:90, 50:128]).max() < 1e-3   # float16 storage
    # the orthophoto layer across shard edges: the same pixels (uint8, exact); clipped at the map's edges
    layer = wm.pmap.ortho
    for r0, c0, r1, c1 in ((0, 0, layer.shape[0], layer.shape[1]), (-5, 100, 40, 400), (200, 200, 10 ** 6, 10 ** 6)):
        win, wr0, wc0 = sm.ortho_window(r0, c0, r1, c1)
        ref, rr0, rc0 = wm.ortho_window(r0, c0, r1, c1)
        assert (wr0, wc0) == (rr0, rc0) and np.array_equal(win, ref)


def test_memory_budget_releases_shards(ray_build, tmp_path):
    """Shards are loaded where they are needed and released least recently used first: the
    loaded bytes stay within map_memory_mb while the position moves over the whole map."""
    from gplq_ros.onboard.mapstore import ShardedMap, write_sharded
    res, _, _ = ray_build
    folder = write_sharded(res, tmp_path / 'folder')
    probe = ShardedMap(folder, memory_mb=64)
    probe._shard(0)
    one = probe.loaded_bytes
    budget_mb = (probe.fixed_bytes + 2.5 * one) / 2 ** 20            # room for two shards, not three
    sm = ShardedMap(folder, memory_mb=budget_mb)
    q = res.descriptors[0]
    peak = 0
    for xy in res.poses[::7, :2]:
        sm.search(q, 8, (xy, 3.0))
        peak = max(peak, sm.resident_bytes())
    assert sm.stats['shards_loaded'] >= 9 and sm.stats['shards_released'] >= 7, sm.stats
    assert peak <= budget_mb * 2 ** 20 and len(sm.loaded) <= 2
    with pytest.raises(MapError, match='map_memory_mb=0.001'):
        ShardedMap(folder, memory_mb=0.001)


def test_shards_of_other_weights_or_vocabulary_are_refused(ray_build, small_ortho, fp32_graph, vocab_file, tmp_path):
    from safetensors.numpy import load_file, save_file
    from gplq_ros.onboard.mapstore import MANIFEST, ShardedMap, write_sharded
    res, _, _ = ray_build
    folder = write_sharded(res, tmp_path / 'folder')
    man = json.loads((folder / MANIFEST).read_text())
    next(e for e in man['shards'] if e['key'] == [1, 1])['vocabulary_sha256'] = 'f' * 64
    (folder / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(MapError, match=r'x0001_y0001.safetensors: vocabulary_sha256 ffffffffffff.*other weights or '):
        ShardedMap(folder)
    # a build folder holding a part made with other weights cannot be finished into this map
    out = tmp_path / 'b' / 'map.safetensors'
    spec = [{'path': str(small_ortho[0]), 'gsd_m': CFG.gsd_m, 'georef': None}]
    cfg = MapConfig(**{**asdict(CFG), 'heights_m': (10.0,), 'stride_m': 12.0, 'headings': 1})
    build_sharded(spec, out, Path(fp32_graph), Path(vocab_file), cfg, BuildConfig(shard_m=SHARD_M))
    part = sorted((out.parent / 'map.safetensors.build').glob('part_*'))[0]
    t = load_file(str(part))
    save_file(t, str(part), metadata={'gplq_ros': json.dumps({'weights_sha256': 'e' * 64,
                                                              'vocabulary_sha256': 'v'})})
    with pytest.raises(MapError, match=r'weights_sha256 eeeeeeeeeeee.*is not this build'):
        build_sharded(spec, out, Path(fp32_graph), Path(vocab_file), cfg, BuildConfig(shard_m=SHARD_M))
    with pytest.raises(MapError, match='holds a build of other inputs \\(config, n_tiles, shard_m differ\\)'):
        build_sharded(spec, out, Path(fp32_graph), Path(vocab_file), CFG, BuildConfig(shard_m=10.0))


def test_a_local_build_gives_idle_workers_cores_to_threads(small_ortho, fp32_graph, vocab_file, reference,
                                                           tmp_path):
    """One shard for 2 local Ray workers: one would work and one wait; built in this process
    with both cores instead (no Ray start), the same tiles. A cluster keeps what it was given."""
    from gplq_ros.onboard.mapshards import _fit_workers
    spec = [{'path': str(small_ortho[0]), 'gsd_m': CFG.gsd_m, 'georef': None}]
    lines = []
    res = build_sharded(spec, tmp_path / 'map', Path(fp32_graph), Path(vocab_file), CFG,
                        BuildConfig(shard_m=1000.0, workers=2, threads=1), print_fn=lines.append)
    assert res.stats['shards'] == 1 and res.stats['workers'] == 0 and res.stats['threads'] == 2, res.stats
    assert '1 unit(s) of work for 2 Ray workers: built in this process with 2 thread(s)' in lines, lines
    m = res.placemap()
    assert np.array_equal(m.poses, reference.poses) and m.descriptors.shape == reference.descriptors.shape
    said = []
    assert _fit_workers(BuildConfig(workers=4, threads=2), 2, said.append) == BuildConfig(workers=2, threads=4)
    for build, units in ((BuildConfig(workers=4, ray_address='auto'), 1), (BuildConfig(workers=2), 2),
                         (BuildConfig(workers=2), 0), (BuildConfig(workers=0, threads=2), 1)):
        assert _fit_workers(build, units, said.append) is build
    assert len(said) == 1


def test_an_interrupted_build_resumes(small_ortho, fp32_graph, vocab_file, reference, tmp_path):
    """A real Ray build (gplq_map, 2 workers): one worker is killed (SIGKILL) after the first
    shard is written -- Ray starts it again and the build goes on --, then the whole build (driver
    and Ray) is killed after the next; run again (in one process), it resumes from the shards
    written and gives the single-process map."""
    out = tmp_path / 'map.safetensors'
    bdir = tmp_path / 'map.safetensors.build'
    args = [sys.executable, '-m', 'gplq_ros.tools.map', str(small_ortho[0]), '--out', str(out), '--gsd', '0.1',
            '--width', '128', '--height', '96', '--hfov', '70', '--heights', '12', '--stride', '6', '--headings', '2',
            '--pca-dim', '16', '--pca-sample', '40', '--shard', str(SHARD_M), '--workers', '2',
            '--reference-model', str(fp32_graph), '--vocabulary', str(vocab_file)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)

    def wait_parts(n, timeout=120):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if len(list(bdir.glob('part_*.safetensors'))) >= n:
                return
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
        raise AssertionError(f'no {n} parts in {timeout} s')
    wait_parts(1)
    import psutil
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if 'ShardWorker' in ' '.join(p.cmdline())
               or 'ShardWorker' in p.name()]
    assert workers, [p.cmdline() for p in psutil.Process(proc.pid).children(recursive=True)]
    workers[0].send_signal(signal.SIGKILL)
    wait_parts(3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    done = len(list(bdir.glob('part_*.safetensors')))
    assert 3 <= done < 9 and not out.exists()
    # resumed in this process (no Ray): the parts do not depend on who wrote them, and a Ray start
    # costs more than the 6 shards left
    resume = list(args)
    i = resume.index('--workers')
    resume[i + 1] = '0'
    resume[i + 2:i + 2] = ['--threads', '1']
    res = subprocess.run(resume, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f'resuming {bdir}: {done} of 9 shards done' in res.stdout, res.stdout
    assert 'in this process of 1 thread' in res.stdout, res.stdout
    assert not bdir.exists()
    from gplq_ros.onboard.placemap import PlaceMap
    _same_map(PlaceMap.load(out), reference)


def test_localizer_estimates_equal_in_the_sharded_map(ray_build, small_ortho, fp32_graph, vocab_file, tmp_path):
    """Frames between the grid's tiles, along a line: the localizer on the sharded folder (global
    index, tracking search near the prediction, orthomap windows and orthophoto layer from the
    shards) gives the estimates it gives on the one-file map, to the float16 storage's centimetres."""
    from gplq_ros.onboard.engine import load
    from gplq_ros.onboard.localize import Localizer, LocalizerConfig
    from gplq_ros.onboard.mapstore import ShardedMap, WholeMap, write_sharded
    from gplq_ros.onboard.placemap import render_tile
    res, _, _ = ray_build
    folder = write_sharded(res, tmp_path / 'folder')
    sm = ShardedMap(folder)
    cfg = LocalizerConfig(init_span_s=1.0, search_radius_m=6.0, cluster_radius_m=6.0)
    whole, sharded = Localizer(WholeMap(res.placemap()), cfg), Localizer(sm, cfg)
    engine = load(Path(fp32_graph), Path(vocab_file), threads=1)
    seen = []
    for i in range(16):
        pose = np.array([16.0 + 2.0 * i, -20.0 - 1.0 * i, 0.15, 12.0])
        frame = render_tile(small_ortho[1], pose, CFG)
        out = engine(frame)
        # with the frame: the verification reads the orthophoto layer from the shards (exact, uint8); the
        # fixes no longer hang on the boundary match of one CPU's engine (8 of 16 on an Intel Xeon, 2 on
        # an AMD Zen 3 without the frame)
        a = whole.update(out.descriptor, 0.5 * i, out.boundary, image=frame)
        b = sharded.update(out.descriptor, 0.5 * i, out.boundary, image=frame)
        assert (a.fix, a.reason) == (b.fix, b.reason), i
        # the sharded map keeps descriptors and orthomap as float16: centimetres at most
        assert np.allclose(a.measurement.xy, b.measurement.xy, atol=0.05)
        if a.fix:
            assert np.allclose(a.xy, b.xy, atol=0.05) and np.allclose(a.cov, b.cov, rtol=0.02, atol=0.02)
        seen.append(a.fix)
    assert sum(seen) >= 8, seen
    assert sm.stats['shards_loaded'] >= 3
