"""The verified measurement (onboard.verify) and the map's orthophoto layer it reads: frames
rendered from a real orthophoto (NEON, 10 cm) and registered back to the map's layer; wrong
places and frames of another place refused; the covariance grows as the evidence shrinks; the
layer's round trip and refusals in one-file and sharded maps; the Localizer with the frames."""
import math
from dataclasses import asdict, replace

import numpy as np
import pytest

from gplq_ros.onboard.fileformat import BACKBONE_ID
from gplq_ros.onboard.flight import DEFAULT_ORTHO, Flight, FlightConfig
from gplq_ros.onboard.localize import Localizer, LocalizerConfig, inside_ellipse, largest_sigma
from gplq_ros.onboard.mapstore import ShardedMap, WholeMap, shard_placemap, write_sharded
from gplq_ros.onboard.placemap import MapConfig, MapError, MapMeta, PlaceMap, ortho_layer, ortho_shape, vocabulary_id
from gplq_ros.onboard.verify import Verifier, VerifyConfig, _augmented

CFG = MapConfig(stride_m=8.0, headings=8, heights_m=(40.0,), gsd_m=0.1, pca_dim=32)


@pytest.fixture(scope='module')
def ortho(images):
    return images[DEFAULT_ORTHO]


def _descriptor_fn(seed=0, dim=64, length_m=12.0):
    """Place descriptors as a smooth random function of position and heading (the retrieval's part
    of these tests; the imagery is real)."""
    rng = np.random.default_rng(seed)
    w, b, wy = rng.normal(0, 1 / length_m, (dim, 2)), rng.uniform(0, 2 * np.pi, dim), rng.normal(0, 1.0, dim)

    def f(x, y, yaw):
        v = np.cos(w @ np.array([x, y]) + b + wy * np.cos(yaw)) + 0.5 * np.sin(wy * np.sin(yaw))
        return (v / np.linalg.norm(v)).astype(np.float32)
    return f


@pytest.fixture(scope='module')
def layered_map(ortho):
    """A place map of the real orthophoto: its layer from ``ortho``, descriptors from ``_descriptor_fn``."""
    f = _descriptor_fn()
    h, w = ortho.shape[:2]
    poses = np.array([(x, -y, k * 2 * np.pi / 8, 40.0) for y in np.arange(40.0, h * 0.1 - 40, 8.0)
                      for x in np.arange(40.0, w * 0.1 - 40, 8.0) for k in range(8)])
    desc = np.stack([f(*p[:3]) for p in poses])
    mean = desc.mean(axis=0)                     # the PCA of 64 dims directly (fit_pca's Gram route is for D >> N)
    _, sv, vt = np.linalg.svd(desc - mean, full_matrices=False)
    basis, explained = vt[:CFG.pca_dim].astype(np.float32), float((sv[:CFG.pca_dim] ** 2).sum() / (sv ** 2).sum())
    proj = (desc - mean) @ basis.T
    meta = MapMeta(BACKBONE_ID, 'w' * 64, vocabulary_id(np.eye(3)), 'fp32.onnx', DEFAULT_ORTHO, 's' * 64, [h, w],
                   asdict(CFG), None, len(poses), explained)
    layer = ortho_layer(lambda r, c, n, m: ortho[r:r + n, c:c + m], CFG, 0, 0, *ortho_shape((h, w), CFG))
    pm = PlaceMap(poses, (proj / np.linalg.norm(proj, axis=1, keepdims=True)).astype(np.float32), mean, basis,
                  np.zeros((8, 8), np.float32), meta, layer)
    return pm, f


@pytest.fixture(scope='module')
def verifier(layered_map):
    """One verifier (default settings) for the module: the map's keypoints are detected once per block."""
    return Verifier(WholeMap(layered_map[0]))


def _flight(ortho, seed=1):
    return Flight(ortho, FlightConfig(gsd_m=0.1, height_m=40.0, seed=seed))


def test_ortho_layer_is_the_same_from_any_window(ortho):
    cfg = replace(CFG, verify_res_m=0.3)                    # 3x3 blocks of the 10 cm orthophoto
    assert cfg.ortho_block == 3 and cfg.ortho_res_m == pytest.approx(0.3)
    h, w = ortho_shape(ortho.shape[:2], cfg)

    def read(r, c, n, m):
        return ortho[r:r + n, c:c + m]
    whole = ortho_layer(read, cfg, 0, 0, h, w)
    assert whole.shape == (ortho.shape[0] // 3, ortho.shape[1] // 3) and whole.dtype == np.uint8
    assert np.array_equal(ortho_layer(read, cfg, 17, 40, 90, 333), whole[17:90, 40:333])
    gray = ortho[:3, :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert abs(int(whole[0, 0]) - gray.mean()) <= 1.0     # a block mean of the grey values (rounding, cvtColor)


def test_rendered_frames_are_verified_at_their_pose(verifier, ortho):
    """Frames rendered from the orthophoto (heights 30-50 m, any yaw) registered from a candidate
    12 m x 9 m off. Bounds: 1 m = 5 pixels of the 0.2 m layer (a wrong pixel convention or scale
    is off by metres: 40 m before a layer-resolution fault was fixed); height within 3 % and yaw
    within 1 deg (their grid: 0.2 m in 40 m = 0.5 %)."""
    v = verifier
    fl = _flight(ortho)
    errs = []
    for t in np.arange(0.0, 60.0, 6.0):
        p = fl.pose(float(t))
        r = v.verify(v.frame_features(fl.render(p)), np.array([p.x_m + 12.0, p.y_m - 9.0]), 40.0, (20.0, 80.0))
        assert r.ok, (t, r)
        e = np.hypot(r.xy[0] - p.x_m, r.xy[1] - p.y_m)
        errs.append(e)
        assert e < 1.0 and abs(r.height_m / p.z_m - 1) < 0.03, (t, e, r.height_m, p.z_m)
        assert abs(math.degrees((r.yaw - p.yaw + math.pi) % (2 * math.pi) - math.pi)) < 1.0, (t, r.yaw, p.yaw)
        assert r.inliers >= VerifyConfig().verify_min_inliers and r.tilt_deg < 2.0
        assert np.all(np.linalg.eigvalsh(r.cov) >= VerifyConfig().verify_floor_m ** 2 - 1e-9)
    assert v.stats['blocks_detected'] > 0


def test_wrong_places_and_other_imagery_are_refused(verifier, ortho, images):
    v = verifier
    fl = _flight(ortho)
    other = images['SOAP_031.png']           # another forest, not in the map
    refused = 0
    for t in np.arange(0.0, 60.0, 6.0):
        p = fl.pose(float(t))
        frame = v.frame_features(fl.render(p))
        # the same frame at a candidate 120 m away in the same map
        far = np.array([p.x_m, p.y_m]) + 120.0 * np.array([math.cos(t), math.sin(t)])
        far = np.clip(far, [40.0, -190.0], [200.0, -40.0])
        if np.hypot(*(far - [p.x_m, p.y_m])) > 60.0:
            r = v.verify(frame, far, 40.0, (20.0, 80.0))
            refused += not r.ok
            assert not r.ok, (t, r)
        # a frame of the other image at the right candidate
        o = Flight(other, FlightConfig(gsd_m=0.1, height_m=40.0, seed=2)).render(p) if min(other.shape[:2]) > 900 \
            else other[:480, :640]
        r = v.verify(v.frame_features(o), np.array([p.x_m, p.y_m]), 40.0, (20.0, 80.0))
        assert not r.ok and r.reason, (t, r)
    assert refused >= 5


def test_fewer_inliers_give_a_larger_covariance(layered_map, verifier, ortho):
    """The covariance comes from the evidence: the same frames with 8x fewer frame keypoints give fewer
    inliers and a larger position sigma (before the floor), on every frame."""
    pm, _ = layered_map
    cfg = VerifyConfig(verify_floor_m=0.01)
    full, few = Verifier(WholeMap(pm), cfg), Verifier(WholeMap(pm), replace(cfg, verify_frame_keypoints=125))
    full.blocks = few.blocks = verifier.blocks            # the same map keypoints (default settings)
    fl = _flight(ortho)
    for t in (0.0, 12.0, 24.0):
        p = fl.pose(t)
        img, xy = fl.render(p), np.array([p.x_m, p.y_m])
        a, b = full.verify(full.frame_features(img), xy, 40.0, (20, 80)), few.verify(few.frame_features(img), xy,
                                                                                     40.0, (20, 80))
        assert a.ok and b.ok and b.inliers < a.inliers, (a, b)
        assert largest_sigma(b.cov) > largest_sigma(a.cov), (t, a.cov, b.cov)


def _brute_force_matches(fd: np.ndarray, wd: np.ndarray, ratio: float) -> set:
    """Lowe's ratio test + mutual nearest neighbour, written out in float64 (L2 distances)."""
    a, b = fd.astype(np.float64), wd.astype(np.float64)
    d = np.sqrt(np.maximum((a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T, 0.0))
    order = np.argsort(d, axis=1, kind='stable')
    out = set()
    for q in range(len(a)):
        t, second = order[q, 0], order[q, 1]
        if d[q, t] < ratio * d[q, second] and np.argmin(d[:, t]) == q:
            out.add((q, int(t)))
    return out


def test_matches_are_exact_mutual_ratio_test_neighbours(verifier, ortho):
    """The matches are exactly the ratio-test mutual nearest neighbours of a float64 brute force
    (SIFT's descriptors are whole numbers: the float32 sums are exact; ties go to the first index in
    both), with the map's SIFT descriptors kept as uint8; in row chunks (a small ``CHUNK``) the same."""
    v = verifier
    fl = _flight(ortho)
    p = fl.pose(30.0)
    img = fl.render(p)
    shared = v.frame_features(img)
    cands = [np.array([p.x_m, p.y_m]) + off for off in ([0.0, 0.0], [15.0, -10.0], [-20.0, 5.0])]
    for xy in cands:
        assert v.verify(shared, xy, 40.0, (20.0, 80.0)).ok
    _, parts = v._window(cands[0], 40.0)
    wd = np.concatenate([block[1][mask] for _, block, mask in parts])
    assert wd.dtype == np.uint8
    got = {tuple(map(int, m)) for m in v._matches(shared, parts)}
    want = _brute_force_matches(shared.descriptors, wd, VerifyConfig().verify_ratio)
    assert len(want) >= VerifyConfig().verify_min_inliers and got == want, (len(got), len(want), len(got ^ want))
    chunked = Verifier(v.map)
    chunked.blocks, chunked.CHUNK = v.blocks, 7 * len(wd) + 3          # 7 frame rows at a time
    assert {tuple(map(int, m)) for m in chunked._matches(shared, parts)} == want


def test_orb_matches_are_exact_hamming_neighbours(layered_map, ortho):
    """ORB's binary descriptors: the distances are Hamming distances (bits unpacked; the squared L2
    of 0/1 vectors), the matches the ratio-test mutual nearest neighbours of a brute force over the
    popcounts, and the frame verifies at its pose."""
    pm, _ = layered_map
    v = Verifier(WholeMap(pm), VerifyConfig(verify_features='orb', verify_frame_width=320))
    p = _flight(ortho).pose(12.0)
    frame = v.frame_features(_flight(ortho).render(p))
    xy = np.array([p.x_m, p.y_m])
    _, parts = v._window(xy, 40.0)
    wd = np.concatenate([block[1][mask] for _, block, mask in parts])
    ham = np.unpackbits(frame.descriptors[:, None, :] ^ wd[None, :, :], axis=2).sum(axis=2)
    base = np.concatenate([block[1][mask] for _, block, mask in parts])
    assert np.array_equal(frame.query @ _augmented(base, True, False).T, ham.astype(np.float32))
    order = np.argsort(ham, axis=1, kind='stable')
    ratio = VerifyConfig().verify_ratio
    want = {(q, int(order[q, 0])) for q in range(len(ham))
            if ham[q, order[q, 0]] < ratio * ham[q, order[q, 1]] and np.argmin(ham[:, order[q, 0]]) == q}
    got = {tuple(map(int, m)) for m in v._matches(frame, parts)}
    assert len(want) >= VerifyConfig().verify_min_inliers and got == want   # integers: no rounding ties
    r = v.verify(frame, xy + [10.0, 0.0], 40.0, (20.0, 80.0))
    assert r.ok and np.hypot(r.xy[0] - p.x_m, r.xy[1] - p.y_m) < 1.0, r


def test_map_keypoints_detected_in_the_background_are_the_same(layered_map, verifier, ortho):
    """prefetch / warm detect the map keypoints in a background thread: the same keypoints as the
    frame's own detection, a window then detects nothing; warm takes a small map's whole layer and
    nothing of a map above verify_warm_blocks; a background detection that fails is counted and the
    frame that needs the block detects it (an error then raises there); close stops the thread."""
    pm, _ = layered_map
    v = Verifier(WholeMap(pm))
    p = _flight(ortho).pose(6.0)
    xy = np.array([p.x_m, p.y_m])
    n = v.prefetch(xy, 40.0)
    assert n == len(v._keys(xy, 40.0)) > 0 and v.prefetch(xy, 40.0) == 0      # submitted once
    v.settle()
    detected = v.stats['blocks_detected']
    assert detected == n and not v.pending and v.stats['prefetch_ms'] > 0
    _, parts = v._window(xy, 40.0)
    assert v.stats['blocks_detected'] == detected                             # nothing detected by the frame
    for key, (pts, desc, _), _ in parts:
        ref = verifier._block(key)
        assert np.array_equal(pts, ref[0]) and np.array_equal(desc, ref[1])
    h, w = pm.ortho.shape
    whole = -(-h // Verifier.BLOCK_PX) * -(-w // Verifier.BLOCK_PX)
    warm = Verifier(WholeMap(pm))
    assert warm.warm() == whole
    warm.settle()
    assert len(warm.blocks) == whole
    assert Verifier(WholeMap(pm), VerifyConfig(verify_warm_blocks=whole - 1)).warm() == 0
    bad = Verifier(WholeMap(pm))

    def fails(key, window, det, clahe):
        raise RuntimeError(f'detection of block {key} failed')
    bad._keypoints = fails
    n = bad.prefetch(xy, 40.0)
    bad.settle()
    assert bad.stats['prefetch_failed'] == n and 'detection of block' in bad.stats['prefetch_error']
    assert not bad.blocks and bad.stats['blocks_foreground'] == 0
    with pytest.raises(RuntimeError, match='detection of block'):
        bad._window(xy, 40.0)
    queued = Verifier(WholeMap(pm))
    assert queued.warm() == whole
    queued.close()                                       # queued detections cancelled, the thread stopped
    assert queued._pool is None and not queued.pending


def test_localizer_prefetches_the_next_window_along_the_track(layered_map, ortho, monkeypatch):
    """With a track, the localizer submits the next frame's window (one frame interval ahead) to the
    background detection: the frames detect fewer blocks themselves than without it (the same flight,
    the background settled between frames as at a survey camera's interval)."""
    pm, f = layered_map
    fl = _flight(ortho)

    def fly():
        loc = Localizer(pm, LocalizerConfig(), VerifyConfig())
        for t in np.arange(0.0, 40.0, 2.0):
            p = fl.pose(float(t))
            loc.update(f(p.x_m, p.y_m, p.yaw), float(t), image=fl.render(p))
            loc.verifier.settle()
        loc.close()
        return loc
    ahead = fly()
    monkeypatch.setattr(Localizer, '_prefetch', lambda self, t, h: None)
    alone = fly()
    assert ahead.fixes == alone.fixes > 0 and ahead.verifier.stats['blocks_prefetched'] > 0
    assert ahead.verifier.stats['blocks_foreground'] < alone.verifier.stats['blocks_foreground'], \
        (ahead.verifier.stats, alone.verifier.stats)


def test_localizer_with_frames_fixes_verified_positions(layered_map, verifier, ortho, images):
    """The Localizer with the frames (0.5 Hz, as a survey camera): fixes on the frames after the
    first, each within 1 m (the verification's bound above) and inside its 2-sigma ellipse
    (the floor of 2.5 m per axis is far above the 0.1-0.8 m errors of rendered frames); frames of
    another place: never a fix."""
    pm, f = layered_map
    fl = _flight(ortho)
    loc = Localizer(pm, LocalizerConfig(), VerifyConfig())
    loc.verifier = verifier                               # its map keypoints, detected once for the module
    rng = np.random.default_rng(0)
    fixes, tracked = [], []
    ts = np.arange(0.0, 36.0, 2.0)
    for t in ts:
        p = fl.pose(float(t))
        d = f(p.x_m, p.y_m, p.yaw) + rng.normal(0, 0.02, 64).astype(np.float32)
        est = loc.update(d / np.linalg.norm(d), float(t), image=fl.render(p))
        assert est.independent is not None and est.independent.inliers > 0, est.reason
        # once the frame verifies where the track predicts, the independent measurement verifies the
        # retrieval's best place only; before, every distinct place up to verify_candidates
        tracked_ok = est.tracked is not None and est.tracked.inliers > 0 and not est.tracked.weak
        assert len(est.independent.verified) == (1 if tracked_ok else
                                                 min(VerifyConfig().verify_candidates,
                                                     len(est.independent.candidates))), (t, est.tracked)
        # a best place within cluster_radius_m of the tracked registration takes it over (not verified again)
        near = tracked_ok and np.hypot(*(est.independent.candidates[0][0] - est.tracked.xy)) <= \
            LocalizerConfig().cluster_radius_m
        assert est.independent.shared == near, (t, est.independent.candidates[0][0], est.tracked.xy)
        if near:
            assert est.independent.verified is est.tracked.verified
            assert np.array_equal(est.independent.xy, est.tracked.xy)
        if est.fix:
            e = est.xy - [p.x_m, p.y_m]
            assert np.hypot(*e) < 1.0 and inside_ellipse(e, est.cov), (t, e, est.cov)
            fixes.append(t)
            tracked.append(tracked_ok)
    assert sum(tracked) >= len(fixes) - 1, tracked            # after the first fix, the track verifies
    assert fixes and fixes[0] <= 2 * 2.0 * (LocalizerConfig().init_fixes - 1) + 1e-9   # init_fixes frames
    assert len(fixes) == len([t for t in ts if t >= fixes[0]])                          # then every frame
    other = images['SOAP_031.png'][:480, :640]
    loc2 = Localizer(pm, LocalizerConfig(), VerifyConfig())
    loc2.verifier = verifier
    for t in ts[:6]:
        p = fl.pose(float(t))
        est = loc2.update(f(p.x_m, p.y_m, p.yaw), float(t), image=other)
        assert not est.fix and est.reason in ('weak', 'ambiguous'), est.reason


def test_a_known_registration_is_taken_over_only_near_its_place(layered_map, verifier, ortho):
    """measure(known=...): the retrieval's best place within cluster_radius_m of the frame's verified
    tracked measurement takes its registration over; a known registration farther away (here 20 m
    off: beyond the same place, within verify_search_m) does not: the place is verified on its own."""
    pm, f = layered_map
    loc = Localizer(pm, LocalizerConfig(), VerifyConfig())
    loc.verifier = verifier
    p = _flight(ortho).pose(20.0)
    frame = verifier.frame_features(_flight(ortho).render(p))
    d = f(p.x_m, p.y_m, p.yaw)
    known = loc.measure(d, frame=frame, candidates=1)
    assert known.inliers > 0 and not known.weak and not known.shared
    took = loc.measure(d, frame=frame, candidates=1, known=known)
    assert took.shared and took.verified is known.verified and np.array_equal(took.xy, known.xy)
    far = replace(known, xy=known.xy + [20.0, 0.0])
    assert 20.0 > LocalizerConfig().cluster_radius_m
    own = loc.measure(d, frame=frame, candidates=1, known=far)
    assert not own.shared and own.inliers > 0 and own.verified is not far.verified
    assert np.hypot(*(own.xy - [p.x_m, p.y_m])) < 1.0


def test_map_orthophoto_layer_round_trips_and_is_refused_when_it_does_not_belong(layered_map, tmp_path):
    pm, _ = layered_map
    path = tmp_path / 'm.safetensors'
    pm.save(path)
    back = PlaceMap.load(path)
    assert back.meta.version == 2 and back.meta.ortho_sha256 and np.array_equal(back.ortho, pm.ortho)
    # another layer under the same metadata: refused by its checksum
    from safetensors.numpy import load_file, save_file
    import json
    t = load_file(str(path))
    from safetensors import safe_open
    with safe_open(str(path), framework='numpy') as fh:
        meta = json.loads(fh.metadata()['gplq_ros'])
    t['ortho'] = t['ortho'].copy()
    t['ortho'][5, 5] ^= 1
    bad = tmp_path / 'bad.safetensors'
    save_file(t, str(bad), metadata={'gplq_ros': json.dumps(meta)})
    with pytest.raises(MapError, match='checksum'):
        PlaceMap.load(bad)
    # a version-1 file claiming a layer, a version-2 file missing the one it records
    save_file(t, str(bad), metadata={'gplq_ros': json.dumps(dict(meta, version=1))})
    with pytest.raises(MapError, match='version 1'):
        PlaceMap.load(bad)
    del t['ortho']
    save_file(t, str(bad), metadata={'gplq_ros': json.dumps(meta)})
    with pytest.raises(MapError, match='missing'):
        PlaceMap.load(bad)
    # a map without a layer (version 1) still loads; the localizer then has no verifier
    save_file(t, str(bad), metadata={'gplq_ros': json.dumps(dict(meta, version=1, ortho_sha256=''))})
    old = PlaceMap.load(bad)
    assert old.ortho is None and Localizer(old).verifier is None
    # sharded: the layer's parts, checked per shard
    folder = write_sharded(shard_placemap(pm, 50.0), tmp_path / 'sharded')
    sm = ShardedMap(folder)
    assert sm.has_ortho and sm.meta.ortho_sha256
    win, r0, c0 = sm.ortho_window(100, 150, 700, 900)
    assert np.array_equal(win, pm.ortho[r0:700, c0:900]) and (r0, c0) == (100, 150)
    shard = sorted((folder / 'shards').iterdir())[3]
    st = load_file(str(shard))
    with safe_open(str(shard), framework='numpy') as fh:
        smeta = fh.metadata()
    st['ortho'] = st['ortho'].copy()
    st['ortho'][0, 0] ^= 1
    save_file(st, str(shard), metadata=smeta)
    with pytest.raises(MapError, match='checksum'):
        ShardedMap(folder).ortho_window(0, 0, 10 ** 5, 10 ** 5)
