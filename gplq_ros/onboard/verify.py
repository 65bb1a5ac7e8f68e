"""Verified measurement (numpy + OpenCV): the frame registered to the map's own imagery around a
candidate place with local geometry, giving position, yaw and height with a covariance from the
inliers, or a clear "not verified".

For one candidate (a retrieved place, or a track's prediction) at ``xy`` with an expected
height:

1. **Window**: the map's keypoints (detected on its grayscale orthophoto layer, ``MapConfig.
   ortho_res_m`` metres per pixel, block by block: ``Verifier``) around ``xy``: within the
   camera's footprint radius at the expected height + ``verify_search_m``. The map and the frame
   get a contrast-limited histogram equalization (CLAHE: exposure, season and sensor change the
   grey levels, not the shapes); the keypoints' scale pyramids take the difference between the
   frame's ground sample distance and the layer's.
2. **Keypoints**: ``verify_features`` (ORB or SIFT) on the frame resized to
   ``verify_frame_width``; matches that pass Lowe's ratio test (``verify_ratio``), mutual best
   (exact nearest neighbours, all distances of a window in one matrix product).
3. **Geometry**: a robust homography (MAGSAC++; frame pixels -> map metres at the frame's expected
   ground sample distance, threshold ``verify_ransac_px``) selects the
   inliers; a planar PnP (OpenCV IPPE) on them with the camera matrix (the map's camera, scaled
   to the frame) gives the camera's pose over the ground plane: its centre (x, y, height),
   yaw (image right from east, counter-clockwise, as the map's poses) and tilt.
4. **Covariance from the evidence**: the pose's covariance is the Gauss-Newton one of the
   reprojection residuals, sigma^2 (J^T J)^-1 with sigma^2 the residuals' variance (2n - 6
   degrees of freedom): few inliers, inliers bunched in one part of the frame or large
   residuals all give a large covariance; propagated to the camera centre. Errors that do not
   average over inliers (the map's georeference, relief, the lens) are ``verify_floor_m``^2 per
   axis.
5. **Not verified** when: fewer than ``verify_min_inliers`` inliers; a tilt above ``verify_max_tilt_deg``;
   a height outside ``heights`` (the range the caller allows); the centre outside the window's
   search area; or a non-finite / degenerate solution. The reason is given.

"""
import math
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

from gplq_ros.onboard.flight import FlightConfig
from gplq_ros.onboard.messages import scale_intrinsics
from gplq_ros.onboard.placemap import ortho_shape
from gplq_ros.onboard.settings import setting, validate

FEATURES = ('sift', 'orb')


@dataclass(frozen=True)
class VerifyConfig:
    """The verification's settings (``onboard.settings``: localizer_node declares one ROS
    parameter per field)."""
    verify: bool = setting(True, 'register the camera frame (topic verify_image) to the map\'s orthophoto '
                           'layer around the retrieved places with keypoints and RANSAC (a map without the '
                           'layer, or no image: the boundary-map refinement)')
    verify_features: str = setting('sift', 'keypoints and descriptors of the verification', choices=FEATURES)
    verify_frame_width: int = setting(240, 'the frame is resized to this width for its keypoints, px (SIFT '
                                      'doubles it for its first octave)', range=(64, 2048))
    verify_frame_keypoints: int = setting(1000, 'most keypoints of the frame', range=(50, 20000))
    verify_block_keypoints: int = setting(800, 'most keypoints of a block of the map\'s orthophoto layer (256 '
                                          'pixels a side)', range=(50, 50000))
    verify_ratio: float = setting(0.8, 'Lowe ratio: best match distance below this times the second best',
                                  range=(0.3, 1.0))
    verify_ransac_px: float = setting(4.0, 'homography (MAGSAC++) inlier threshold, frame px at verify_frame_width',
                                      range=(0.5, 50.0))
    verify_min_inliers: int = setting(15, 'fewer inliers of the homography and the pose: not verified',
                                      range=(6, 10000))
    verify_max_tilt_deg: float = setting(25.0, 'a larger camera tilt from nadir: not verified', range=(1.0, 80.0))
    verify_search_m: float = setting(30.0, 'the window covers the footprint and this much around the candidate, '
                                     'm', range=(1.0, 500.0))
    verify_floor_m: float = setting(2.5, 'smallest standard deviation of a verified position per axis (map '
                                    'georeference, relief, lens), added to what the inliers give, m',
                                    range=(0.01, 100.0))
    verify_candidates: int = setting(3, 'distinct retrieved places verified per frame (best first)',
                                     range=(1, 50))
    verify_warm_blocks: int = setting(400, 'at start (Localizer.warm: the node\'s configure), the map keypoints of the '
                                      'whole orthophoto layer are detected in the background when it has at most '
                                      'this many blocks (256 pixels a side; at most the 400 blocks the verifier '
                                      'keeps); larger maps, or 0: along the track only', range=(0, 400))

    def __post_init__(self):
        validate(self)


@dataclass
class Verified:
    """One candidate's verification: ``ok`` or the ``reason`` it is not."""
    ok: bool
    reason: str = ''
    xy: Optional[np.ndarray] = None        # camera centre over the ground, map metres
    cov: Optional[np.ndarray] = None       # (2, 2) m^2, with the floor
    yaw: float = float('nan')              # radians, image right from east
    yaw_var: float = float('nan')
    height_m: float = float('nan')
    tilt_deg: float = float('nan')
    inliers: int = 0
    matches: int = 0
    residual_px: float = float('nan')      # RMS reprojection residual of the inliers, frame px


def camera_matrix(width: int, height: int, hfov_deg: float, out_width: int) -> Tuple[np.ndarray, float]:
    """K of the map's camera (the simulator's pinhole: ``flight.FlightConfig.camera_matrix``) for the
    frame resized to ``out_width`` (``messages.scale_intrinsics``), and the resize factor."""
    s = out_width / width
    k = FlightConfig(width=width, height=height, hfov_deg=hfov_deg).camera_matrix()
    return scale_intrinsics(k, s, s), s


def to_gray(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY if img.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return img


def _vectors(desc: np.ndarray, bits: bool) -> np.ndarray:
    """Descriptors as float32 vectors whose squared L2 distance is the matching distance: SIFT's as
    they are, ORB's 256 bits (``bits``) unpacked to 0/1 (squared L2 of bit vectors = Hamming distance)."""
    if bits:
        return np.unpackbits(desc, axis=1).astype(np.float32)
    return np.ascontiguousarray(desc, np.float32)


def _squares(v: np.ndarray) -> np.ndarray:
    """Squared norms of the rows of ``v`` (``_vectors``)."""
    return np.einsum('ij,ij->i', v, v)


def _augmented(desc: np.ndarray, bits: bool, query: bool, squares: Optional[np.ndarray] = None) -> np.ndarray:
    """Vectors whose dot products are squared distances: [-2 a, 1, |a|^2] (query) . [b, |b|^2, 1]
    (base) = |a - b|^2, so that one matrix product gives them all (``squares``: |b|^2 when known)."""
    v = _vectors(desc, bits)
    sq = (_squares(v) if squares is None else squares)[:, None].astype(np.float32)
    one = np.ones_like(sq)
    return np.hstack([-2.0 * v, one, sq]) if query else np.hstack([v, sq, one])


def _compact(desc: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """SIFT's float descriptors hold whole numbers 0-255 (OpenCV rounds them): kept as uint8 (4x less
    memory), else as they are. ORB's are uint8 bit strings already."""
    if desc is None or desc.dtype == np.uint8:
        return desc
    if desc.size and desc.min() >= 0 and desc.max() <= 255 and np.array_equal(desc, np.round(desc)):
        return desc.astype(np.uint8)
    return desc


class FrameKeypoints:
    """A frame's keypoints (``Verifier.frame_features``): ``points`` (n, 2) float32 at
    ``verify_frame_width``, ``descriptors`` (None without keypoints) and their vectors for the
    distances (``_augmented``), made once for all the frame's candidates."""

    def __init__(self, points: np.ndarray, descriptors: Optional[np.ndarray], bits: bool):
        self.points, self.descriptors = points, descriptors
        self.query = None if descriptors is None else _augmented(descriptors, bits, True)


def verify_frame(rgb: np.ndarray, width: int) -> np.ndarray:
    """The frame as the verification takes it: grey, ``width`` wide (area-averaged; the aspect kept)."""
    g = to_gray(rgb)
    h = max(1, int(round(g.shape[0] * width / g.shape[1])))
    return g if g.shape[1] == width else cv2.resize(g, (width, h), interpolation=cv2.INTER_AREA)


class Verifier:
    """Verification against one map (module doc). ``pmap``: anything with ``config``
    (``MapConfig``), ``meta.image_hw`` and ``ortho_window(r0, c0, r1, c1) -> (array, row0, col0)``.

    The map's keypoints are detected block by block (``BLOCK_PX`` layer pixels a side, each with
    a ``MARGIN_PX`` border so that its keypoints do not depend on the window that asked), when a
    window first needs the block, and kept (at most ``blocks`` blocks, least recently used
    released first): a flight detects the map's keypoints of a place once. ``prefetch`` detects the
    blocks of a window expected next (the track's next position) in a background thread, so that a
    frame over a new place does not wait for them. ``close`` stops the thread.
    ``stats``: blocks_detected (kept, either way), blocks_foreground (detected by a frame),
    blocks_prefetched (submitted), prefetch_failed (background detections that raised: the block is
    detected again by the frame that needs it, where an error raises), prefetch_ms."""

    BLOCK_PX = 256
    MARGIN_PX = 32
    ORB_PATCH = 31

    def __init__(self, pmap, cfg: VerifyConfig = VerifyConfig(), blocks: int = 400):
        self.map, self.cfg, self.mc = pmap, cfg, pmap.config
        self.bits = cfg.verify_features == 'orb'           # binary descriptors: Hamming distances
        self.k, self.frame_scale = camera_matrix(self.mc.width, self.mc.height, self.mc.hfov_deg,
                                                 cfg.verify_frame_width)
        self.clahe = self._clahe()
        self.frame_det = self._detector(cfg.verify_frame_keypoints)
        self.block_det = self._detector(cfg.verify_block_keypoints)
        self.blocks: 'OrderedDict[tuple, tuple]' = OrderedDict()
        self.max_blocks = blocks
        # background detection (prefetch): its own detector and CLAHE (OpenCV's objects are not shared
        # between threads); the futures are collected by the caller's thread only
        self.pending: 'dict[tuple, Future]' = {}
        self._pool: Optional[ThreadPoolExecutor] = None
        self._bg = None
        self.stats = {'blocks_detected': 0, 'blocks_released': 0, 'blocks_foreground': 0, 'blocks_prefetched': 0,
                      'prefetch_failed': 0, 'prefetch_error': '', 'prefetch_ms': 0.0}

    @staticmethod
    def _clahe():
        """The contrast equalization of the frame and the map (one per thread: OpenCV's objects are not shared)."""
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))

    def _detector(self, n: int):
        if self.cfg.verify_features == 'sift':
            return cv2.SIFT_create(nfeatures=n)
        return cv2.ORB_create(nfeatures=n, scaleFactor=1.2, nlevels=8, edgeThreshold=self.ORB_PATCH,
                              patchSize=self.ORB_PATCH, fastThreshold=10)

    def frame_size(self) -> Tuple[int, int]:
        """(width, height) the frame is resized to."""
        return self.cfg.verify_frame_width, max(1, int(round(self.mc.height * self.frame_scale)))

    def frame_features(self, image: np.ndarray) -> FrameKeypoints:
        """Keypoints of a frame (undistorted camera image, any size with the map camera's aspect)."""
        g = to_gray(image)
        w, h = self.frame_size()
        if g.shape[1] != w:
            g = cv2.resize(g, (w, h), interpolation=cv2.INTER_AREA)
        return FrameKeypoints(*self._detect(self.frame_det, self.clahe.apply(np.ascontiguousarray(g))), self.bits)

    @staticmethod
    def _detect(det, g):
        kp, desc = det.detectAndCompute(g, None)
        if desc is None or not kp:
            return np.zeros((0, 2), np.float32), None
        return np.float32([k.pt for k in kp]), desc

    def frame_gsd(self, height_m: float) -> float:
        """Metres per pixel of the resized frame at ``height_m`` over flat ground."""
        return height_m / self.k[0, 0]

    def _layer(self, key):
        """The map's orthophoto layer around block ``key`` (the block and ``MARGIN_PX`` around it)."""
        b, m = self.BLOCK_PX, self.MARGIN_PX
        r0, c0 = key[1] * b - m, key[0] * b - m
        return self.map.ortho_window(r0, c0, r0 + b + 2 * m, c0 + b + 2 * m)

    def _keypoints(self, key, window, det, clahe):
        """(points in map metres (n, 2), descriptors (``_compact``), their squared norms) of the map's
        keypoints in layer block ``key`` from its ``window`` (``_layer``)."""
        layer, lr0, lc0 = window
        b, res, gsd = self.BLOCK_PX, self.mc.ortho_res_m, self.mc.gsd_m
        pts, desc = np.zeros((0, 2)), None
        if layer.size >= 64 and min(layer.shape) >= 16:
            px, d = self._detect(det, clahe.apply(np.ascontiguousarray(layer)))
            if d is not None:
                rows, cols = px[:, 1] + lr0, px[:, 0] + lc0          # layer pixel coordinates
                inside = (rows >= key[1] * b - 0.5) & (rows < (key[1] + 1) * b - 0.5) & \
                    (cols >= key[0] * b - 0.5) & (cols < (key[0] + 1) * b - 0.5)
                # layer pixel -> metres (placemap.ortho_layer: centres at (j + 0.5) res - gsd / 2)
                pts = np.stack([(cols[inside] + 0.5) * res - 0.5 * gsd, -((rows[inside] + 0.5) * res - 0.5 * gsd)],
                               axis=1).astype(np.float64)
                desc = d[inside] if inside.any() else None
        desc = _compact(desc)
        return pts, desc, (None if desc is None else _squares(_vectors(desc, self.bits)))

    def _keep(self, key, entry):
        self.stats['blocks_detected'] += 1
        self.blocks[key] = entry
        while len(self.blocks) > self.max_blocks:
            self.blocks.popitem(last=False)
            self.stats['blocks_released'] += 1
        return entry

    def _block(self, key):
        """The map's keypoints in layer block ``key`` (``_keypoints``): kept, prefetched (waited
        for when running; one still queued is taken out of the queue and detected now) or detected
        now."""
        if key in self.blocks:
            self.blocks.move_to_end(key)
            return self.blocks[key]
        fut = self.pending.pop(key, None)
        if fut is not None and not fut.cancel():
            self._collect_one(key, fut, wait=True)
            if key in self.blocks:
                return self.blocks[key]
        self.stats['blocks_foreground'] += 1
        return self._keep(key, self._keypoints(key, self._layer(key), self.block_det, self.clahe))

    def _background(self, key, window):
        """The worker's detection (one worker thread: its detector and CLAHE are its own)."""
        t0 = time.perf_counter()
        entry = self._keypoints(key, window, *self._bg)
        self.stats['prefetch_ms'] += (time.perf_counter() - t0) * 1e3
        return entry

    def _collect_one(self, key, fut: Future, wait: bool = False) -> None:
        """A background detection into the kept blocks; one that raised is counted (``stats``) and
        left to the frame that needs the block."""
        try:
            entry = fut.result() if wait else fut.result(timeout=0)
        except Exception as e:                  # noqa: BLE001 -- counted and retried in the foreground
            self.stats['prefetch_failed'] += 1
            self.stats['prefetch_error'] = f'block {key}: {type(e).__name__}: {e}'
            return
        self._keep(key, entry)

    def _collect(self) -> None:
        """Finished background detections into the kept blocks (the caller's thread only)."""
        for key in [k for k, f in self.pending.items() if f.done()]:
            self._collect_one(key, self.pending.pop(key))

    def prefetch(self, xy, height_m: float) -> int:
        """Detect the map keypoints of the window at ``xy``, ``height_m`` (``_window``) that are not
        kept yet, in a background thread; the layer is read here (the map is not shared with the
        thread). Returns the number of blocks submitted. A frame that needs one of them takes it
        when ready or waits for it."""
        return self._submit(self._keys(np.asarray(xy, float), height_m))

    def warm(self) -> int:
        """Prefetch every block of the map's orthophoto layer when there are at most
        ``verify_warm_blocks`` of them (and the kept blocks hold them all); else none. Returns the
        number of blocks submitted."""
        h, w = ortho_shape(self.map.meta.image_hw, self.mc)
        b = self.BLOCK_PX
        keys = [(bx, by) for by in range(-(-h // b)) for bx in range(-(-w // b))]
        return self._submit(keys) if len(keys) <= min(self.cfg.verify_warm_blocks, self.max_blocks) else 0

    def _submit(self, keys) -> int:
        self._collect()
        keys = [k for k in keys if k not in self.blocks and k not in self.pending]
        if keys and self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix='verify-prefetch')
            self._bg = (self._detector(self.cfg.verify_block_keypoints), self._clahe())
        for key in keys:
            self.pending[key] = self._pool.submit(self._background, key, self._layer(key))
        self.stats['blocks_prefetched'] += len(keys)
        return len(keys)

    def settle(self) -> None:
        """Wait for the background detections and keep their blocks."""
        for key in list(self.pending):
            self._collect_one(key, self.pending.pop(key), wait=True)

    def close(self) -> None:
        """Stop the background thread (queued detections cancelled; the running one finishes)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.pending.clear()

    def _radius(self, height_m: float) -> float:
        """The window's radius: the footprint's half diagonal at ``height_m`` + ``verify_search_m``."""
        w, h = self.frame_size()
        return 0.5 * math.hypot(w, h) * self.frame_gsd(height_m) + self.cfg.verify_search_m

    def _keys(self, xy, height_m: float):
        """The layer blocks the window at ``xy``, ``height_m`` touches."""
        res, b, radius = self.mc.ortho_res_m, self.BLOCK_PX, self._radius(height_m)
        c0, c1 = (xy[0] - radius) / res, (xy[0] + radius) / res
        r0, r1 = (-xy[1] - radius) / res, (-xy[1] + radius) / res
        return [(bx, by) for by in range(max(int(math.floor(r0 / b)), 0), int(math.floor(r1 / b)) + 1)
                for bx in range(max(int(math.floor(c0 / b)), 0), int(math.floor(c1 / b)) + 1)]

    def _window(self, xy, height_m: float):
        """The map's keypoints a frame at ``xy`` and ``height_m`` can see at any yaw: within its
        footprint's radius (half its diagonal) + ``verify_search_m``. (points in metres (n, 2),
        [(block key, block, mask of the block's keypoints in the window)])."""
        radius = self._radius(height_m)
        pts, parts = [], []
        for key in self._keys(xy, height_m):
            block = self._block(key)
            p = block[0]
            if block[1] is not None:
                near = np.hypot(p[:, 0] - xy[0], p[:, 1] - xy[1]) <= radius
                if near.any():
                    pts.append(p[near])
                    parts.append((key, block, near))
        if not pts:
            return np.zeros((0, 2)), []
        return np.concatenate(pts), parts

    CHUNK = 1 << 22          # squared distances computed at once (16 MB of float32): frame rows in chunks

    def _matches(self, frame: 'FrameKeypoints', parts) -> np.ndarray:
        """(m, 2) index pairs (frame, window keypoint) of the window ``parts`` (``_window``): Lowe's
        ratio test from the frame's side (L2 distances for SIFT, Hamming for ORB), kept when the
        frame keypoint is also the map keypoint's nearest (mutual). Exact nearest neighbours: the
        squared distances as matrix products (``_augmented``), frame rows in chunks of ``CHUNK``
        distances; whole-number descriptors (SIFT's, ORB's bits) give exact float32 sums."""
        n = len(frame.points)
        if n < 2 or sum(int(m.sum()) for _, _, m in parts) < 2:
            return np.zeros((0, 2), np.int64)
        base = np.concatenate([_augmented(desc[mask], self.bits, False, sq[mask]) for _, (_, desc, sq), mask in parts])
        best = np.empty(n, np.int64)
        d1, d2 = np.empty(n, np.float64), np.empty(n, np.float64)
        step = max(1, self.CHUNK // len(base))
        for r0 in range(0, n, step):
            dist = frame.query[r0:r0 + step] @ base.T             # (frame rows, window) squared distances
            rows = np.arange(len(dist))
            b = dist.argmin(axis=1)
            best[r0:r0 + step] = b
            d1[r0:r0 + step] = dist[rows, b]
            dist[rows, b] = np.inf
            d2[r0:r0 + step] = dist.min(axis=1)
        d1, d2 = np.maximum(d1, 0.0), np.maximum(d2, 0.0)
        if not self.bits:
            d1, d2 = np.sqrt(d1), np.sqrt(d2)
        q = np.flatnonzero(d1 < self.cfg.verify_ratio * d2)
        if not len(q):
            return np.zeros((0, 2), np.int64)
        t = best[q]
        cols, inv = np.unique(t, return_inverse=True)
        back = (frame.query @ base[cols].T).argmin(axis=0)        # each matched map keypoint's nearest frame keypoint
        mutual = back[inv] == q
        return np.stack([q[mutual], t[mutual]], axis=1).astype(np.int64)

    def verify(self, frame, xy, height_m: float, heights: Tuple[float, float]) -> Verified:
        """Verify the candidate at ``xy`` (map metres) expected at ``height_m``; ``frame`` =
        ``frame_features(image)`` (of this verifier); ``heights`` = (lowest, highest) height accepted."""
        cfg = self.cfg
        fp = frame.points
        if frame.descriptors is None or len(fp) < cfg.verify_min_inliers:
            return Verified(False, f'{len(fp)} frame keypoints')
        xy = np.asarray(xy, float)
        wp, parts = self._window(xy, height_m)
        px_per_m = 1.0 / self.frame_gsd(height_m)
        if len(wp) < cfg.verify_min_inliers:
            return Verified(False, f'{len(wp)} map keypoints')
        m = self._matches(frame, parts)
        if len(m) < cfg.verify_min_inliers:
            return Verified(False, f'{len(m)} matches', matches=len(m))
        src = fp[m[:, 0]].astype(np.float64)
        dst = wp[m[:, 1]]
        # RANSAC in window pixels (the frame's scale): map metres * px_per_m, y down
        dst_px = np.stack([dst[:, 0], -dst[:, 1]], axis=1) * px_per_m
        # MAGSAC++ (OpenCV USAC): a robust homography in a few ms at inlier ratios where RANSAC runs its
        # whole iteration budget
        hmat, mask = cv2.findHomography(src, dst_px, cv2.USAC_MAGSAC, cfg.verify_ransac_px, maxIters=2000,
                                        confidence=0.999)
        if hmat is None or mask is None:
            return Verified(False, 'no homography', matches=len(m))
        inl = mask.ravel().astype(bool)
        n = int(inl.sum())
        if n < cfg.verify_min_inliers:
            return Verified(False, f'{n} inliers', inliers=n, matches=len(m))
        obj = np.concatenate([dst[inl], np.zeros((n, 1))], axis=1)
        img = src[inl]
        ok, rvec, tvec = cv2.solvePnP(obj, img, self.k, None, flags=cv2.SOLVEPNP_IPPE)
        if not ok:
            return Verified(False, 'no pose', inliers=n, matches=len(m))
        rvec, tvec = cv2.solvePnPRefineLM(obj, img, self.k, None, rvec, tvec)
        proj, jac = cv2.projectPoints(obj, rvec, tvec, self.k, None)
        res = (proj.reshape(-1, 2) - img).ravel()
        # inliers of the pose (the homography's may include points the plane's pose does not explain)
        per = np.hypot(res[0::2], res[1::2])
        keep = per <= cfg.verify_ransac_px
        if int(keep.sum()) < cfg.verify_min_inliers:
            return Verified(False, f'{int(keep.sum())} pose inliers', inliers=int(keep.sum()), matches=len(m))
        if not keep.all():
            obj, img = obj[keep], img[keep]
            rvec, tvec = cv2.solvePnPRefineLM(obj, img, self.k, None, rvec, tvec)
            proj, jac = cv2.projectPoints(obj, rvec, tvec, self.k, None)
            res = (proj.reshape(-1, 2) - img).ravel()
        n = len(obj)
        rot, _ = cv2.Rodrigues(rvec)
        centre = (-rot.T @ tvec).ravel()
        tilt = math.degrees(math.acos(min(max(-rot[2, 2], -1.0), 1.0)))
        yaw = math.atan2(rot[0, 1], rot[0, 0])
        base = Verified(False, '', inliers=n, matches=len(m), tilt_deg=tilt, height_m=float(centre[2]),
                        residual_px=float(np.sqrt(np.mean(res ** 2) * 2)))
        if not np.isfinite(centre).all() or centre[2] <= 0:
            base.reason = 'pose below the ground'
            return base
        if tilt > cfg.verify_max_tilt_deg:
            base.reason = f'tilt {tilt:.0f} deg'
            return base
        if not heights[0] <= centre[2] <= heights[1]:
            base.reason = f'height {centre[2]:.0f} m outside {heights[0]:.0f}-{heights[1]:.0f} m'
            return base
        if float(np.hypot(*(centre[:2] - np.asarray(xy, float)))) > cfg.verify_search_m:
            base.reason = 'outside the search'
            return base
        j = jac[:, :6].astype(np.float64)
        sigma2 = float(res @ res) / max(2 * n - 6, 1)
        try:
            cov6 = sigma2 * np.linalg.inv(j.T @ j)
        except np.linalg.LinAlgError:
            base.reason = 'degenerate geometry'
            return base
        g = _pose_jacobian(rvec.ravel(), tvec.ravel())
        cov_c = g @ cov6 @ g.T                           # x, y, height, yaw
        cov = cov_c[:2, :2] + cfg.verify_floor_m ** 2 * np.eye(2)
        if not np.isfinite(cov).all():
            base.reason = 'degenerate geometry'
            return base
        yaw_var = float(cov_c[3, 3]) + (cfg.verify_floor_m / max(centre[2], 1.0)) ** 2
        base.ok, base.xy, base.cov, base.yaw, base.yaw_var = True, centre[:2].copy(), 0.5 * (cov + cov.T), yaw, yaw_var
        return base


def _pose_jacobian(rvec: np.ndarray, tvec: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d(camera centre x, y, z, yaw) / d(rvec, tvec): (4, 6), central differences of
    C = -R(r)^T t and yaw = atan2(R[0, 1], R[0, 0])."""
    def centre(p):
        r, _ = cv2.Rodrigues(p[:3])
        return np.append(-r.T @ p[3:], math.atan2(r[0, 1], r[0, 0]))
    p0 = np.concatenate([rvec, tvec]).astype(np.float64)
    out = np.zeros((4, 6))
    for i in range(6):
        d = np.zeros(6)
        d[i] = eps
        diff = centre(p0 + d) - centre(p0 - d)
        diff[3] = (diff[3] + math.pi) % (2 * math.pi) - math.pi
        out[:, i] = diff / (2 * eps)
    return out
