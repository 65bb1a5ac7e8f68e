"""GNSS-free position from the place descriptor (numpy only): retrieval in a ``PlaceMap``,
a position from the top-k tiles, and a constant-velocity Kalman filter with gating.

Per frame (``Localizer.update``):

1. **Retrieval**: the frame's VLAD projected into the map's PCA space, scores = one
   matrix-vector product with the map's descriptors, top ``top_k`` tiles.
2. **Measurement**: the tiles of the top-k within ``cluster_radius_m`` of the best one are
   the same place; their positions weighted by ``exp((score - best) / temperature)`` give
   the position, their weighted spread plus the grid's own quantization (stride^2 / 12 per
   axis) and ``sigma_floor_m``^2, times ``measurement_scale``, its covariance (never zero);
   yaw is their weighted circular mean (variance: spread + (360 / headings)^2 / 12).
   **Margin** = best score - best score of a tile outside the cluster: a small margin means
   another place looks as alike, and the frame gives no measurement below ``min_margin``.
3. **Filter**: state x, y, vx, vy; white-acceleration process noise ``accel_sigma``.
   It starts after ``init_fixes`` consecutive measurements that agree with each other
   (each within ``max_speed_mps`` x elapsed time + 3 sigma of the previous one). A
   measurement farther from the last fix than the drone could fly since, or outside the
   ``gate_chi2`` innovation gate, is rejected; after ``reset_after`` rejections in a row
   the filter restarts (lost). A clock jump back restarts it too.

A frame yields a fix (``Estimate.fix``) only when its measurement was accepted by the
running filter: the fix is the filter's posterior position and covariance, the
measurement's yaw. Otherwise the estimate carries the reason and no position is published.
"""
import copy
import math
from dataclasses import dataclass
from typing import List, Optional

import cv2
import numpy as np

from gplq_ros.onboard.placemap import PlaceMap
from gplq_ros.onboard.settings import setting, validate


@dataclass(frozen=True)
class LocalizerConfig:
    """The localizer's settings (``onboard.settings``): the localizer node declares one ROS
    parameter per field, same name, help and range."""
    top_k: int = setting(24, 'tiles retrieved per frame', range=(1, 1000))
    cluster_radius_m: float = setting(12.0, 'top-k tiles this close to the best are the same place',
                                      range=(0.1, 1000.0))
    temperature: float = setting(0.05, 'score softness of the top-k position weights', range=(1e-4, 10.0))
    min_margin: float = setting(0.0, 'no measurement when the best other place scores within this of the best',
                                range=(0.0, 1.99))
    sigma_floor_m: float = setting(1.0, 'smallest measurement standard deviation, m', range=(0.01, 1000.0))
    measurement_scale: float = setting(16.0, 'multiplier on the measurement covariance', range=(0.01, 1000.0))
    accel_sigma: float = setting(3.0, 'filter process noise, white acceleration, m/s^2', range=(0.001, 100.0))
    max_speed_mps: float = setting(20.0, 'a fix farther than this speed allows since the last fix is rejected',
                                   range=(0.1, 500.0))
    gate_chi2: float = setting(13.82, 'innovation gate (chi-square, 2 dof)', range=(0.1, 1000.0))
    init_fixes: int = setting(3, 'consistent measurements to start the filter', range=(1, 100))
    reset_after: int = setting(10, 'rejections in a row before the filter restarts', range=(1, 10000))
    refine: bool = setting(True, "refine the retrieved position by matching the frame's boundary map (topic "
                           "boundary_map, same stamp as the descriptor) against the map's boundary orthomap")
    search_radius_m: float = setting(12.0, 'refinement: translations searched around the retrieved position, m',
                                     range=(0.5, 100.0))
    yaw_span_deg: float = setting(20.0, 'refinement: yaws searched around the retrieved yaw, degrees',
                                  range=(0.0, 90.0))
    min_ncc: float = setting(0.3, 'refinement: a weaker boundary-map match keeps the retrieval measurement',
                             range=(-1.0, 1.0))
    refine_sigma_m: float = setting(2.0, 'refinement: standard deviation of a refined position, m',
                                    range=(0.01, 100.0))
    height_ratio_min: float = setting(0.7, 'refinement without a track: lowest height searched, times the lowest '
                                      'map height', range=(0.1, 1.0))
    height_ratio_max: float = setting(1.6, 'refinement without a track: highest height searched, times the highest '
                                      'map height', range=(1.0, 10.0))
    recheck_every: int = setting(10, 'while tracking, every n-th frame whose retrieval points elsewhere also '
                                 'searches there (0: never)', range=(0, 10000))
    recheck_margin: float = setting(0.1, 'a place matching this much better (NCC) than the track is a challenger',
                                    range=(0.0, 2.0))
    recheck_confirm: int = setting(2, 'challenger rechecks in a row that restart the filter on it', range=(1, 100))

    def __post_init__(self):
        validate(self)


class FilterFault(RuntimeError):
    """The filter failed numerically on a frame (numpy.linalg.LinAlgError, an overflow, a
    non-finite state or covariance); ``Localizer.update`` left the filter as it was before
    the frame. Not a ValueError: a malformed input is one."""


@dataclass
class Measurement:
    xy: np.ndarray           # (2,) metres in map
    cov: np.ndarray          # (2, 2) m^2
    yaw: float               # radians
    yaw_var: float           # rad^2
    score: float             # best tile's cosine in PCA space
    margin: float
    tile: int                # best tile index
    ncc: float = float('nan')   # boundary-map match of the refinement (nan: not refined)
    height_m: float = float('nan')
    retrieval_xy: Optional[np.ndarray] = None    # the retrieval's position and yaw, before the refinement
    retrieval_yaw: float = float('nan')


@dataclass
class Estimate:
    t: float
    measurement: Optional[Measurement]
    fix: bool = False
    reason: str = ''         # why no fix: 'ambiguous', 'initialising', 'jump', 'gate', 'lost'
    xy: Optional[np.ndarray] = None
    cov: Optional[np.ndarray] = None


def largest_sigma(cov: np.ndarray) -> float:
    """Standard deviation along the worst axis of a 2x2 covariance."""
    return math.sqrt(max(np.linalg.eigvalsh(cov)))


def patch_grid(boundary: np.ndarray) -> np.ndarray:
    """A frame's boundary map as the refinement reads it: a finite float32 (rows, cols) grid; a map
    at camera resolution (the feature node's map_resolution: input) is reduced to 16 columns."""
    b = np.asarray(boundary, np.float32)
    if b.ndim != 2 or b.size < 16 or not np.isfinite(b).all():
        raise ValueError(f'boundary map shape {b.shape}: expected a finite (rows, cols) patch grid')
    if b.shape[1] > 32:
        b = cv2.resize(b, (16, max(1, round(16 * b.shape[0] / b.shape[1]))), interpolation=cv2.INTER_AREA)
    return b


def circular_mean(angles: np.ndarray, weights: np.ndarray):
    c, s = (weights * np.cos(angles)).sum(), (weights * np.sin(angles)).sum()
    mean = math.atan2(s, c)
    d = (angles - mean + math.pi) % (2 * math.pi) - math.pi
    return mean, float((weights * d ** 2).sum() / weights.sum())


class BoundaryMatcher:
    """Position refinement: the frame's patch-grid boundary map against the map's boundary
    orthomap. A candidate pose (x, y, yaw, height) puts each patch centre of the frame at a
    point of the orthomap (the flight simulator's camera model); its score is the normalized
    cross-correlation of the frame's values with the orthomap's there (bilinear). Coarse
    search: translations every 2 m within ``radius``, yaws every 10 deg within ``span``,
    heights from ``ratios[0]`` x the lowest to ``ratios[1]`` x the highest map height (ratio
    1.1); fine search around the best: 0.5 m, 2.5 deg, ratio 1.05."""

    def __init__(self, pmap: PlaceMap, ratios=(0.7, 1.6)):
        mc = pmap.config
        self.g = np.ascontiguousarray(pmap.boundary, np.float32)
        self.res, self.mc = mc.boundary_res_m, mc
        lo, hi = ratios[0] * min(mc.heights_m), ratios[1] * max(mc.heights_m)
        self.heights = lo * 1.1 ** np.arange(int(math.log(hi / lo) / math.log(1.1)) + 2)
        self._pattern = {}

    def pattern(self, grid_hw):
        """Patch centres of a (gh, gw) grid, camera pixels relative to the image centre."""
        if grid_hw not in self._pattern:
            gh, gw = grid_hw
            w, h = self.mc.width, self.mc.height
            jj, ii = np.meshgrid(np.arange(gw), np.arange(gh))
            u = (jj.ravel() + 0.5) * w / gw - 0.5 - (w - 1) / 2
            v = (ii.ravel() + 0.5) * h / gh - 0.5 - (h - 1) / 2
            self._pattern[grid_hw] = (u, v)
        return self._pattern[grid_hw]

    def scores(self, q: np.ndarray, xy, offsets: np.ndarray, yaws, heights):
        """NCC of every (yaw, height, offset) candidate: array (len(yaws), len(heights), len(offsets))."""
        u, v = self.pattern(q.shape)
        qn = q.ravel() - q.mean()
        qn = qn / max(float(np.linalg.norm(qn)), 1e-12)
        yaws, heights = np.asarray(yaws), np.asarray(heights)
        c, s = np.cos(yaws)[:, None, None], np.sin(yaws)[:, None, None]
        m = np.array([self.mc.scale(h) * self.mc.gsd_m for h in heights])[None, :, None]   # metres per camera px
        # image right = (cos yaw, sin yaw) in map metres, image down = (sin yaw, -cos yaw)
        ex, ey = m * (u * c + v * s), m * (u * s - v * c)                                 # (Y, H, P)
        x = xy[0] + offsets[:, 0][None, None, :, None] + ex[:, :, None, :]
        y = xy[1] + offsets[:, 1][None, None, :, None] + ey[:, :, None, :]
        n = x.shape[0] * x.shape[1] * x.shape[2]
        mx = (x / self.res).reshape(n, -1).astype(np.float32)
        my = (-y / self.res).reshape(n, -1).astype(np.float32)
        vals = cv2.remap(self.g, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        vals = vals - vals.mean(axis=1, keepdims=True)
        ncc = (vals @ qn) / np.maximum(np.linalg.norm(vals, axis=1), 1e-12)
        return ncc.reshape(x.shape[:3])

    @staticmethod
    def _grid(radius: float, step: float) -> np.ndarray:
        r = np.arange(-radius, radius + 1e-9, step)
        gx, gy = np.meshgrid(r, r)
        return np.stack([gx.ravel(), gy.ravel()], axis=1)

    def refine(self, q: np.ndarray, xy: np.ndarray, yaw: float, radius: float, span_deg: float,
               height: Optional[float] = None):
        """(ncc, xy, yaw, height) of the best candidate. Without ``height`` (acquisition): every
        height, yaws every 10 deg, then a fine search +-1.5 m, +-5 deg. With ``height`` (tracking:
        the last fix's): the three heights next to it, yaws every 5 deg, then +-1 m, +-2.5 deg."""
        tracking = height is not None
        yaws = yaw + np.radians(np.arange(-span_deg, span_deg + 1e-9, 5.0 if tracking else 10.0))
        offs = self._grid(radius, 2.0)
        heights = height * 1.1 ** np.arange(-1, 2) if tracking else self.heights
        sc = self.scores(q, xy, offs, yaws, heights)
        iy, ih, io = np.unravel_index(int(np.argmax(sc)), sc.shape)
        xy1, yaw1, h1 = xy + offs[io], yaws[iy], heights[ih]
        yaws = yaw1 + np.radians([-2.5, 0.0, 2.5] if tracking else [-5.0, -2.5, 0.0, 2.5, 5.0])
        heights = h1 * 1.05 ** np.arange(-1, 2)
        offs = self._grid(1.0 if tracking else 1.5, 0.5)
        sc = self.scores(q, xy1, offs, yaws, heights)
        iy, ih, io = np.unravel_index(int(np.argmax(sc)), sc.shape)
        return float(sc[iy, ih, io]), xy1 + offs[io], float(yaws[iy]), float(heights[ih])


class Localizer:
    """GNSS-free localization against one ``PlaceMap`` (steps in the module docstring).

    ``update(descriptor, t, boundary=None)`` takes one frame's VLAD descriptor (and its
    boundary map, for the refinement) at time ``t`` (the frame's stamp) and returns an
    ``Estimate``: a fix (the filter's posterior position and covariance, the measurement's
    yaw) when the measurement was accepted, else the reason there is none. ``update`` is
    transactional: a frame that raises (ValueError, ``FilterFault``) leaves the filter as it
    was. ``measure`` is retrieval plus refinement alone, without the filter; ``reset``
    forgets the track (also done on a clock jump back); ``state``/``restore`` snapshot it.
    Counters for diagnostics: ``frames``, ``fixes``, ``recheck_restarts``. Use from one
    thread (the node's worker)."""

    def __init__(self, pmap: PlaceMap, cfg: LocalizerConfig = LocalizerConfig()):
        self.map, self.cfg = pmap, cfg
        mc = pmap.config
        self.grid_var = mc.stride_m ** 2 / 12.0
        self.heading_var = (2 * math.pi / mc.headings) ** 2 / 12.0
        self.matcher = BoundaryMatcher(pmap, (cfg.height_ratio_min, cfg.height_ratio_max)) if cfg.refine else None
        self.reset()
        self.fixes = self.frames = self.rejected_total = self.recheck_restarts = 0

    def reset(self) -> None:
        self.x: Optional[np.ndarray] = None          # (4,) x, y, vx, vy
        self.P: Optional[np.ndarray] = None
        self.t: Optional[float] = None               # time of the filter state
        self.pending: List[tuple] = []               # (t, Measurement) agreeing candidates for a start
        self.rejected = 0
        self.last_fix: Optional[tuple] = None        # (t, xy, sigma)
        self.last_refined: Optional[tuple] = None    # (yaw, height) of the last refined fix
        self.since_recheck = 0
        self.challenger: Optional[tuple] = None      # (t, xy, count) of a better-matching place than the track

    # -- 1 + 2: one frame's measurement ---------------------------------------------------------------
    def measure(self, descriptor: np.ndarray, boundary: Optional[np.ndarray] = None, prior=None) -> Measurement:
        """The retrieval measurement; refined with ``boundary`` (the frame's (gh, gw) boundary map)
        when the localizer refines and the match reaches ``min_ncc``. The refinement searches
        around the retrieval (``search_radius_m``, ``yaw_span_deg``, every height), or, with
        ``prior`` = (xy, radius, yaw, height) from the running filter, around that."""
        meas = self._retrieve(descriptor)
        meas.retrieval_xy, meas.retrieval_yaw = meas.xy.copy(), meas.yaw
        if boundary is None or self.matcher is None:
            return meas
        b = patch_grid(boundary)
        if prior is None:
            ncc, xy, yaw, h = self.matcher.refine(b, meas.xy, meas.yaw, self.cfg.search_radius_m,
                                                  self.cfg.yaw_span_deg)
        else:
            pxy, radius, pyaw, ph = prior
            ncc, xy, yaw, h = self.matcher.refine(b, pxy, pyaw, radius, min(10.0, self.cfg.yaw_span_deg), ph)
        meas.ncc = ncc
        if ncc >= self.cfg.min_ncc:
            self._refined(meas, xy, yaw, h)
        return meas

    def _refined(self, meas: Measurement, xy: np.ndarray, yaw: float, height: float) -> None:
        """``meas`` takes a refinement's position, yaw and height, with their uncertainties."""
        meas.xy, meas.yaw, meas.height_m = xy, yaw, height
        meas.cov = self.cfg.refine_sigma_m ** 2 * np.eye(2)
        meas.yaw_var = math.radians(2.5) ** 2

    def _retrieve(self, descriptor: np.ndarray) -> Measurement:
        cfg, m = self.cfg, self.map
        q = m.project(descriptor)
        scores = m.descriptors @ q
        k = min(cfg.top_k, len(scores))
        idx = np.argpartition(-scores, k - 1)[:k]
        idx = idx[np.argsort(-scores[idx], kind='stable')]
        s, pos = scores[idx].astype(np.float64), m.poses[idx]
        d = np.hypot(*(pos[:, :2] - pos[0, :2]).T)
        near = d <= cfg.cluster_radius_m
        far = scores[idx[~near]] if (~near).any() else None
        if far is None:     # every top-k tile is the same place: the margin is at least the k-th gap
            margin = float(s[0] - s[-1])
        else:
            margin = float(s[0] - far.max())
        w = np.exp((s[near] - s[0]) / cfg.temperature)
        w /= w.sum()
        p = pos[near]
        xy = (w[:, None] * p[:, :2]).sum(axis=0)
        dev = p[:, :2] - xy
        spread = (w[:, None, None] * dev[:, :, None] * dev[:, None, :]).sum(axis=0)
        cov = cfg.measurement_scale * (spread + (self.grid_var + cfg.sigma_floor_m ** 2) * np.eye(2))
        yaw, yaw_spread = circular_mean(p[:, 2], w)
        return Measurement(xy, cov, yaw, yaw_spread + self.heading_var, float(s[0]), margin, int(idx[0]))

    # -- 3: the filter ---------------------------------------------------------------------------------
    def _predict(self, t: float) -> None:
        dt = t - self.t
        f = np.eye(4)
        f[0, 2] = f[1, 3] = dt
        q1 = self.cfg.accel_sigma ** 2 * np.array([[dt ** 4 / 4, dt ** 3 / 2], [dt ** 3 / 2, dt ** 2]])
        qm = np.zeros((4, 4))
        qm[np.ix_([0, 2], [0, 2])] = q1
        qm[np.ix_([1, 3], [1, 3])] = q1
        self.x, self.P, self.t = f @ self.x, f @ self.P @ f.T + qm, t

    def _prior(self, t: float):
        """While tracking with refined fixes: the search centre, radius (3 sigma of the predicted
        position + 2 m, at least 4 m, at most search_radius_m), yaw and height of the last fix."""
        if self.x is None or self.last_refined is None or self.matcher is None:
            return None
        dt = max(t - self.t, 0.0)
        xy = self.x[:2] + self.x[2:] * dt
        var = float(max(np.linalg.eigvalsh(self.P[:2, :2]))) + float(max(np.linalg.eigvalsh(self.P[2:, 2:]))) * dt ** 2
        radius = min(max(3 * math.sqrt(var) + 2.0, 4.0), self.cfg.search_radius_m)
        return xy, radius, self.last_refined[0], self.last_refined[1]

    def _reachable(self, t: float, prev_t: float, prev_xy, prev_sigma: float, meas: Measurement) -> bool:
        sigma = largest_sigma(meas.cov)
        reach = self.cfg.max_speed_mps * max(t - prev_t, 0.0) + 3 * (sigma + prev_sigma)
        return float(np.hypot(*(meas.xy - prev_xy))) <= reach

    def _start(self, t: float, meas: Measurement) -> Estimate:
        if self.pending:
            pt, pm = self.pending[-1]
            if not self._reachable(t, pt, pm.xy, largest_sigma(pm.cov), meas):
                self.pending = []
        self.pending.append((t, meas))
        if len(self.pending) < self.cfg.init_fixes:
            return Estimate(t, meas, reason='initialising')
        (t0, m0), (t1, m1) = self.pending[0], self.pending[-1]
        v = (m1.xy - m0.xy) / (t1 - t0) if t1 > t0 else np.zeros(2)
        self.x = np.concatenate([m1.xy, v])
        self.P = np.zeros((4, 4))
        self.P[:2, :2] = m1.cov
        self.P[2:, 2:] = np.eye(2) * (self.cfg.max_speed_mps / 2) ** 2
        self.t, self.pending, self.rejected = t, [], 0
        return self._fix(t, meas)

    def _fix(self, t: float, meas: Measurement) -> Estimate:
        cov = 0.5 * (self.P[:2, :2] + self.P[:2, :2].T)
        self.last_refined = (meas.yaw, meas.height_m) if np.isfinite(meas.height_m) else None
        self.last_fix = (t, self.x[:2].copy(), largest_sigma(cov))
        self.fixes += 1
        return Estimate(t, meas, fix=True, xy=self.x[:2].copy(), cov=cov)

    # the filter's state: everything ``update`` may change (``frames`` counts every frame, failed or not)
    _STATE = ('x', 'P', 't', 'pending', 'rejected', 'last_fix', 'last_refined', 'since_recheck', 'challenger',
              'fixes', 'rejected_total', 'recheck_restarts')

    def state(self) -> dict:
        """A deep copy of the filter's state (``restore`` puts it back)."""
        return {k: copy.deepcopy(getattr(self, k)) for k in self._STATE}

    def restore(self, state: dict) -> None:
        for k in self._STATE:
            setattr(self, k, state[k])

    def update(self, descriptor: np.ndarray, t: float, boundary: Optional[np.ndarray] = None) -> Estimate:
        """One frame at time ``t`` (seconds of the node's clock, the frame's stamp), with its
        boundary map for the refinement (optional). Transactional: when the frame fails (a
        malformed input raises ValueError, a numerical failure of the filter ``FilterFault``)
        the filter is left exactly as it was before the frame."""
        self.frames += 1
        if not np.isfinite(descriptor).all():     # a malformed input, not a jump of the drone
            raise ValueError('descriptor has non-finite values')
        before = self.state()
        try:
            est = self._update(descriptor, t, boundary)
            if self.x is not None and not (np.isfinite(self.x).all() and np.isfinite(self.P).all()):
                raise FilterFault(f'non-finite filter state at t={t:.6g} (x={self.x}, P diagonal={np.diag(self.P)})')
        except (np.linalg.LinAlgError, ArithmeticError) as e:   # LinAlgError is a ValueError: still the filter's
            self.restore(before)
            raise FilterFault(f'{type(e).__name__} at t={t:.6g}: {e}') from e
        except BaseException:
            self.restore(before)
            raise
        return est

    def _update(self, descriptor: np.ndarray, t: float, boundary: Optional[np.ndarray]) -> Estimate:
        if self.t is not None and t < self.t:                 # clock jumped back (bag replayed): start over
            self.reset()
        if boundary is not None:
            boundary = patch_grid(boundary)                   # once, for the refinement and a recheck
        prior = self._prior(t)
        meas = self.measure(descriptor, boundary, prior)
        if prior is not None and self._recheck(boundary, meas, prior, t):
            self.reset()
            self.recheck_restarts += 1
            return self._start(t, meas)
        if meas.margin < self.cfg.min_margin:
            return self._reject(t, meas, 'ambiguous')
        if self.x is None:
            return self._start(t, meas)
        lt, lxy, lsig = self.last_fix
        if not self._reachable(t, lt, lxy, lsig, meas):
            return self._reject(t, meas, 'jump')
        self._predict(t)
        h_p = self.P[:2]
        s = h_p[:, :2] + meas.cov
        innov = meas.xy - self.x[:2]
        if float(innov @ np.linalg.solve(s, innov)) > self.cfg.gate_chi2:
            return self._reject(t, meas, 'gate')
        k = np.linalg.solve(s, h_p).T                       # (4, 2) = P H^T S^-1
        self.x = self.x + k @ innov
        self.P = self.P - k @ h_p
        self.P = 0.5 * (self.P + self.P.T)
        self.rejected = 0
        return self._fix(t, meas)

    def _recheck(self, boundary, meas: Measurement, prior, t: float) -> bool:
        """Guard against a track on the wrong place (a look-alike found at the start): every
        ``recheck_every``-th tracked frame whose retrieval points outside the tracking search,
        search around the retrieval too; when it matches ``recheck_margin`` better than the
        track ``recheck_confirm`` times in a row at places the drone could fly between, the
        measurement becomes that place and the caller restarts the filter on it."""
        cfg = self.cfg
        self.since_recheck += 1
        if not cfg.recheck_every or self.since_recheck < cfg.recheck_every or not np.isfinite(meas.ncc):
            return False
        if float(np.hypot(*(meas.retrieval_xy - prior[0]))) <= prior[1]:
            return False                               # the retrieval agrees with the track: nothing to check
        self.since_recheck = 0
        ncc, xy, yaw, h = self.matcher.refine(boundary, meas.retrieval_xy, meas.retrieval_yaw, cfg.search_radius_m,
                                              cfg.yaw_span_deg)
        if ncc < meas.ncc + cfg.recheck_margin:
            self.challenger = None
            return False
        ok = self.challenger is not None and \
            float(np.hypot(*(xy - self.challenger[1]))) <= cfg.max_speed_mps * (t - self.challenger[0]) + \
            3 * cfg.refine_sigma_m
        count = self.challenger[2] + 1 if ok else 1
        self.challenger = (t, xy, count)
        if count < cfg.recheck_confirm:
            return False
        meas.ncc = ncc
        self._refined(meas, xy, yaw, h)
        return True

    def _reject(self, t: float, meas: Measurement, reason: str) -> Estimate:
        self.rejected_total += 1
        if self.x is not None:
            self.rejected += 1
            if self.rejected >= self.cfg.reset_after:
                self.reset()
                reason = 'lost'
        return Estimate(t, meas, reason=reason)


def inside_ellipse(err: np.ndarray, cov: np.ndarray, k: float = 2.0) -> bool:
    """Whether the 2-D error lies inside the k-sigma ellipse of ``cov`` (Mahalanobis <= k)."""
    return float(err @ np.linalg.solve(cov, err)) <= k * k


def summarize(frames: int, fixes: list, truth: list, t0: float) -> dict:
    """Figures of a flight: ``fixes`` [(t, xy, cov, yaw)], ``truth`` [(t, xy, yaw)] paired by time.
    Correct fix: error <= 5 m; rates over the frames after the first fix."""
    by_t = {round(t, 6): (xy, yaw) for t, xy, yaw in truth}
    err, yerr, inside, times = [], [], [], []
    for t, xy, cov, yaw in fixes:
        true = by_t.get(round(t, 6))
        if true is None:
            continue
        e = np.asarray(xy) - true[0]
        err.append(float(np.hypot(*e)))
        yerr.append(abs(math.degrees((yaw - true[1] + math.pi) % (2 * math.pi) - math.pi)))
        inside.append(inside_ellipse(e, np.asarray(cov)))
        times.append(t)
    after = [t for t, _, _ in truth if times and t >= times[0]]
    n_after = max(len(after), 1)
    e = np.array(err) if err else np.array([np.nan])
    return {'frames': frames, 'fixes': len(err),
            'fix_rate': len(err) / n_after if err else 0.0,
            'correct_fix_rate': float(np.sum(e <= 5.0)) / n_after if err else 0.0,
            'error_p50_m': float(np.nanpercentile(e, 50)), 'error_p95_m': float(np.nanpercentile(e, 95)),
            'error_max_m': float(np.nanmax(e)),
            'yaw_error_p50_deg': float(np.median(yerr)) if yerr else float('nan'),
            'inside_2sigma': float(np.mean(inside)) if inside else float('nan'),
            'time_to_first_fix_s': (times[0] - t0) if times else None}
