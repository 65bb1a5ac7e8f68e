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
import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from gplq_ros.onboard.fileformat import check_fields
from gplq_ros.onboard.placemap import PlaceMap


@dataclass(frozen=True)
class LocalizerConfig:
    top_k: int = 24
    cluster_radius_m: float = 12.0
    temperature: float = 0.05
    min_margin: float = 0.0
    sigma_floor_m: float = 1.0
    measurement_scale: float = 16.0
    accel_sigma: float = 3.0          # m/s^2
    max_speed_mps: float = 20.0
    gate_chi2: float = 13.82          # chi-square, 2 dof, 0.999
    init_fixes: int = 3
    reset_after: int = 10

    def __post_init__(self):
        check_fields(self, [
            ('top_k', 1 <= self.top_k <= 1000), ('cluster_radius_m', 0 < self.cluster_radius_m <= 1000),
            ('temperature', 1e-4 <= self.temperature <= 10), ('min_margin', 0 <= self.min_margin < 2),
            ('sigma_floor_m', 0.01 <= self.sigma_floor_m <= 1000),
            ('measurement_scale', 0.01 <= self.measurement_scale <= 1000),
            ('accel_sigma', 0.001 <= self.accel_sigma <= 100), ('max_speed_mps', 0.1 <= self.max_speed_mps <= 500),
            ('gate_chi2', 0.1 <= self.gate_chi2 <= 1000), ('init_fixes', 1 <= self.init_fixes <= 100),
            ('reset_after', 1 <= self.reset_after <= 10000)])


@dataclass
class Measurement:
    xy: np.ndarray           # (2,) metres in map
    cov: np.ndarray          # (2, 2) m^2
    yaw: float               # radians
    yaw_var: float           # rad^2
    score: float             # best tile's cosine in PCA space
    margin: float
    tile: int                # best tile index


@dataclass
class Estimate:
    t: float
    measurement: Optional[Measurement]
    fix: bool = False
    reason: str = ''         # why no fix: 'ambiguous', 'initialising', 'jump', 'gate', 'lost'
    xy: Optional[np.ndarray] = None
    cov: Optional[np.ndarray] = None


def circular_mean(angles: np.ndarray, weights: np.ndarray):
    c, s = (weights * np.cos(angles)).sum(), (weights * np.sin(angles)).sum()
    mean = math.atan2(s, c)
    d = (angles - mean + math.pi) % (2 * math.pi) - math.pi
    return mean, float((weights * d ** 2).sum() / weights.sum())


class Localizer:
    def __init__(self, pmap: PlaceMap, cfg: LocalizerConfig = LocalizerConfig()):
        self.map, self.cfg = pmap, cfg
        mc = pmap.config
        self.grid_var = mc.stride_m ** 2 / 12.0
        self.heading_var = (2 * math.pi / mc.headings) ** 2 / 12.0
        self.reset()
        self.fixes = self.frames = self.rejected_total = 0

    def reset(self) -> None:
        self.x: Optional[np.ndarray] = None          # (4,) x, y, vx, vy
        self.P: Optional[np.ndarray] = None
        self.t: Optional[float] = None               # time of the filter state
        self.pending: List[tuple] = []               # (t, Measurement) agreeing candidates for a start
        self.rejected = 0
        self.last_fix: Optional[tuple] = None        # (t, xy, sigma)

    # -- 1 + 2: one frame's measurement ---------------------------------------------------------------
    def measure(self, descriptor: np.ndarray) -> Measurement:
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

    def _reachable(self, t: float, prev_t: float, prev_xy, prev_sigma: float, meas: Measurement) -> bool:
        sigma = math.sqrt(max(np.linalg.eigvalsh(meas.cov)))
        reach = self.cfg.max_speed_mps * max(t - prev_t, 0.0) + 3 * (sigma + prev_sigma)
        return float(np.hypot(*(meas.xy - prev_xy))) <= reach

    def _start(self, t: float, meas: Measurement) -> Estimate:
        if self.pending:
            pt, pm = self.pending[-1]
            if not self._reachable(t, pt, pm.xy, math.sqrt(max(np.linalg.eigvalsh(pm.cov))), meas):
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
        self.last_fix = (t, self.x[:2].copy(), math.sqrt(max(np.linalg.eigvalsh(cov))))
        self.fixes += 1
        return Estimate(t, meas, fix=True, xy=self.x[:2].copy(), cov=cov)

    def update(self, descriptor: np.ndarray, t: float) -> Estimate:
        """One frame at time ``t`` (seconds of the node's clock, the frame's stamp)."""
        self.frames += 1
        if self.t is not None and t < self.t:                 # clock jumped back (bag replayed): start over
            self.reset()
        meas = self.measure(descriptor)
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
