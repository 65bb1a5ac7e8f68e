"""The odometry frame placed on the map along the trajectory (numpy only).

An odometry (VIO, the autopilot's local position) knows how the drone moved, not where it is: its
frame is rotated and shifted against ``map`` and it drifts with the distance travelled. The
localizer's accepted measurements, each paired with the odometry pose of its frame (*anchors*),
fix that frame: ``OdometryAlignment`` fits the rotation and shift map <- odometry over a window of
anchors at once (a consensus over the trajectory, not frame by frame), so that

* one measurement in a few keeps the position known: between measurements the odometry carries
  it (``Alignment.predict``), with a covariance that grows with the distance travelled since the
  anchors (``drift_frac`` per metre, the odometry's own error) and with the lever arm of the
  rotation's uncertainty;
* a wrong measurement is outvoted: anchors that no rotation-and-shift agreeing with most of the
  others explains are left out (``outliers``), and no alignment is given while they are not a
  minority.

Error model. Anchor i: ``m_i = R(theta) o_i + shift - drift (s_i - s_ref) + e_i`` (``s``: odometry
path length, ``s_ref`` the newest anchor's), ``drift`` the odometry's error per metre in map axes
(a heading or scale error: a displacement's error grows linearly with its length; prior
``N(0, drift_frac^2)`` per axis), ``e_i ~ N(0, C_i + D_i)`` with ``C_i`` the measurement's
covariance and ``D_i = (drift_frac * |s_ref - s_i|)^2 I`` the part of the odometry's error the
drift does not explain (a random walk, bounded conservatively by the linear growth). The fit is
weighted least squares of (theta, shift, drift) by Gauss-Newton with the prior; its covariance is
the inverse information, scaled up by the chi-square per degree of freedom (residuals and prior)
when it exceeds 1. The prediction at odometry pose ``o`` (path length ``s``) propagates that
covariance, adds ``(drift_frac * |s - s_ref|)^2`` per axis, and never claims less than the smallest
shared-error floor of its anchors (errors measurements of one kind share, such as the map's
georeference, do not average out).
"""
import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

# 2-D chi-square, 99.9 %: an anchor farther than this from a fit is an outlier of it
GATE_CHI2 = 13.82


def rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _drot(theta: float) -> np.ndarray:
    """d rotation(theta) / d theta."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[-s, -c], [c, -s]])


@dataclass(frozen=True)
class Anchor:
    odom: np.ndarray      # (2,) odometry position of the frame
    s: float              # odometry path length at the frame, m
    xy: np.ndarray        # (2,) the measurement's map position
    cov: np.ndarray       # (2, 2) its covariance
    floor_m: float = 0.0  # the part of its error that measurements of its kind share (map georeference, relief)


@dataclass(frozen=True)
class Alignment:
    """map = rotation(theta) @ odom + shift - drift * (s - s_ref), fitted to ``inliers`` anchors."""
    theta: float
    shift: np.ndarray     # (2,)
    drift: np.ndarray     # (2,) the odometry's error per metre travelled, map axes
    cov: np.ndarray       # (5, 5) covariance of (theta, shift x, shift y, drift x, drift y)
    s_ref: float          # path length of the newest anchor
    floor_var: float      # squared smallest shared-error floor of the inlier anchors: averaging stops there
    drift_frac: float     # the odometry's error per metre beyond the fitted drift (a random walk's part)
    inliers: int
    outliers: int
    chi2_per_dof: float   # the fit's residuals against what the inputs claim (1: as claimed)

    def predict(self, odom, s: float):
        """(xy, cov): the map position of odometry position ``odom`` at path length ``s``."""
        o = np.asarray(odom, float)[None]
        ds = np.array([s - self.s_ref])
        xy = (o @ rotation(self.theta).T + self.shift - np.outer(ds, self.drift))[0]
        j = _jacobian(self.theta, o, ds)[0]                                   # (2, 5)
        cov = j @ self.cov @ j.T + np.eye(2) * (self.drift_frac * ds[0]) ** 2
        cov = 0.5 * (cov + cov.T)
        lam, vec = np.linalg.eigh(cov)
        lift = np.maximum(self.floor_var - lam, 0.0)
        return xy, cov + (vec * lift) @ vec.T


class OdometryAlignment:
    """Anchors (odometry pose, measurement) of one track and the alignment they support.

    ``window``: the newest anchors kept; ``spacing_m``: one anchor per this much odometry travel (per
    slot of path length the one with the smallest covariance area: frames a few metres apart see
    nearly the same view, their measurements' errors are not independent); ``min_span_m``: the
    extent of the inliers' odometry positions before an alignment is given (the rotation is
    unknown over a shorter baseline); ``min_inliers``: anchors that must agree, and always more than half of them (two
    anchors agree when their map distance matches their odometry distance; a third one that does not
    fit both is outvoted)."""

    def __init__(self, drift_frac: float, window: int = 30, min_span_m: float = 20.0, min_inliers: int = 2,
                 spacing_m: float = 5.0):
        if not (math.isfinite(drift_frac) and drift_frac >= 0):
            raise ValueError(f'drift_frac={drift_frac!r}: must be a finite number >= 0')
        if window < min_inliers or min_inliers < 2:
            raise ValueError(f'window={window}, min_inliers={min_inliers}: need window >= min_inliers >= 2')
        if not (math.isfinite(spacing_m) and spacing_m >= 0):
            raise ValueError(f'spacing_m={spacing_m!r}: must be a finite number >= 0')
        self.drift_frac, self.window, self.min_span_m, self.min_inliers = drift_frac, window, min_span_m, min_inliers
        self.spacing_m = spacing_m
        self.anchors: List[Anchor] = []
        self._fit: Optional[Alignment] = None
        self._stale = False

    def __len__(self) -> int:
        return len(self.anchors)

    def __eq__(self, other) -> bool:
        """Same settings and anchors (the fit is derived from them)."""
        if not isinstance(other, OdometryAlignment):
            return NotImplemented
        return (self.drift_frac, self.window, self.min_span_m, self.min_inliers, self.spacing_m) == \
            (other.drift_frac, other.window, other.min_span_m, other.min_inliers, other.spacing_m) and \
            len(self.anchors) == len(other.anchors) and \
            all(a.s == b.s and a.floor_m == b.floor_m and
                all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ('odom', 'xy', 'cov'))
                for a, b in zip(self.anchors, other.anchors))

    __hash__ = None

    def add(self, odom, s: float, xy, cov, floor_m: float = 0.0) -> None:
        """One accepted measurement ``xy`` / ``cov`` of the frame whose odometry position is ``odom``
        at path length ``s``; ``floor_m``: the standard deviation of the error it shares with other
        measurements of its kind (the map's georeference, relief), which no number of them averages out."""
        a = Anchor(np.asarray(odom, float).copy(), float(s), np.asarray(xy, float).copy(),
                   np.asarray(cov, float).copy(), float(floor_m))
        if not (np.isfinite(a.odom).all() and np.isfinite(a.xy).all() and np.isfinite(a.cov).all()
                and math.isfinite(a.s)):
            raise ValueError(f'anchor odom={a.odom}, s={a.s}, xy={a.xy}: not finite')
        if self.anchors and self.spacing_m > 0 and \
                math.floor(a.s / self.spacing_m) == math.floor(self.anchors[-1].s / self.spacing_m):
            # one anchor per spacing_m of path length (fixed slots: the kept anchor cannot creep forward)
            if np.linalg.det(a.cov) >= np.linalg.det(self.anchors[-1].cov):
                return                                       # the anchor kept in this slot is at least as good
            self.anchors = self.anchors[:-1]
        self.anchors = (self.anchors + [a])[-self.window:]
        self._stale = True

    def alignment(self) -> Optional[Alignment]:
        """The alignment of the current anchors, or None while they do not support one (too few,
        too short a span, or no majority agreeing)."""
        if self._stale:
            try:
                self._fit = self._solve()
            except np.linalg.LinAlgError:        # a degenerate set (all anchors at one odometry position)
                self._fit = None
            self._stale = False
        return self._fit

    # -- the fit --------------------------------------------------------------------------------------
    def _arrays(self):
        o = np.array([a.odom for a in self.anchors])
        m = np.array([a.xy for a in self.anchors])
        ds = np.array([a.s for a in self.anchors]) - self.anchors[-1].s
        c = np.array([a.cov for a in self.anchors])
        return o, m, ds, c

    def _solve(self) -> Optional[Alignment]:
        n = len(self.anchors)
        if n < self.min_inliers:
            return None
        o, m, ds, c = self._arrays()
        # consensus: every pair of anchors apart in the odometry proposes a rotation and shift (no
        # drift); the one the most anchors agree with, within their covariance plus the drift a
        # displacement of their distance from the newest anchor can have, wins (least chi-square on ties)
        gate_w = np.linalg.inv(c + np.eye(2) * (self.drift_frac * ds)[:, None, None] ** 2)
        i, j = np.triu_indices(n, 1)
        do, dm = o[j] - o[i], m[j] - m[i]
        ok = (np.hypot(*do.T) >= 1.0) & (np.hypot(*dm.T) >= 1.0)
        if not ok.any():
            return None
        i, j, do, dm = i[ok], j[ok], do[ok], dm[ok]
        theta = np.arctan2(dm[:, 1], dm[:, 0]) - np.arctan2(do[:, 1], do[:, 0])
        cs, sn = np.cos(theta), np.sin(theta)
        rot = np.stack([np.stack([cs, -sn], -1), np.stack([sn, cs], -1)], -2)              # (h, 2, 2)
        shift = 0.5 * (m[i] + m[j]) - np.einsum('hab,hb->ha', rot, 0.5 * (o[i] + o[j]))
        r = m[None] - np.einsum('hab,nb->hna', rot, o) - shift[:, None]                     # (h, n, 2)
        chi2 = np.einsum('hna,nab,hnb->hn', r, gate_w, r)
        inside = chi2 <= GATE_CHI2
        score = inside.sum(1) - np.minimum(chi2, GATE_CHI2).sum(1) / (GATE_CHI2 * n + 1.0)
        inl = inside[int(np.argmax(score))]
        for _ in range(3):                     # refit on the consensus, re-gate, until it settles
            if inl.sum() < 2:
                return None
            q, info = self._gauss_newton(o[inl], m[inl], ds[inl], gate_w[inl])
            new = self._residual_chi2(q, o, m, ds, gate_w) <= GATE_CHI2
            if (new == inl).all():
                break
            inl = new
        else:                                  # not settled: the fit of the last set, which is what is reported
            if inl.sum() < 2:
                return None
            q, info = self._gauss_newton(o[inl], m[inl], ds[inl], gate_w[inl])
        k = int(inl.sum())
        # the baseline: the inliers' extent in the odometry frame (a hover's path length fixes no rotation)
        oi = o[inl]
        extent = float(np.sqrt(((oi[:, None] - oi[None]) ** 2).sum(-1).max())) if k else 0.0
        if k < self.min_inliers or 2 * k <= n or extent < self.min_span_m:
            return None
        cov = np.linalg.inv(info)
        dof = 2 * k - 3
        chi2 = float(self._residual_chi2(q, o[inl], m[inl], ds[inl], gate_w[inl]).sum()) + \
            float(q[3:5] @ q[3:5]) / max(self.drift_frac, 1e-6) ** 2          # the drift prior's residual
        per_dof = chi2 / dof if dof > 0 else 1.0
        cov = cov * max(1.0, per_dof)
        floor = min(a.floor_m for a, ok in zip(self.anchors, inl) if ok) ** 2
        return Alignment(float(q[0]), q[1:3].copy(), q[3:5].copy(), cov, self.anchors[-1].s, floor,
                         self.drift_frac, k, n - k, per_dof)

    @staticmethod
    def _predicted(q, o, ds):
        return o @ rotation(q[0]).T + q[1:3] - np.outer(ds, q[3:5])

    def _residual_chi2(self, q, o, m, ds, w) -> np.ndarray:
        r = m - self._predicted(q, o, ds)
        return np.einsum('na,nab,nb->n', r, w, r)

    def _gauss_newton(self, o: np.ndarray, m: np.ndarray, ds: np.ndarray, w: np.ndarray):
        """(q, information): q = (theta, shift x, shift y, drift x, drift y), the weighted least squares
        fit of m = R o + shift - drift * ds with the prior drift ~ N(0, drift_frac^2) per axis."""
        sw = np.array([np.trace(x) for x in w])          # start: Procrustes with scalar weights, no drift
        oc, mc = (sw[:, None] * o).sum(0) / sw.sum(), (sw[:, None] * m).sum(0) / sw.sum()
        a, b = o - oc, m - mc
        theta = math.atan2(float((sw * (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])).sum()),
                           float((sw * (a * b).sum(1)).sum()))
        q = np.concatenate([[theta], mc - rotation(theta) @ oc, [0.0, 0.0]])
        prior = np.diag([0.0, 0.0, 0.0, 1.0, 1.0]) / max(self.drift_frac, 1e-6) ** 2
        for _ in range(10):
            jac = _jacobian(q[0], o, ds)
            r = m - self._predicted(q, o, ds)
            info = np.einsum('nia,nij,njb->ab', jac, w, jac) + prior
            step = np.linalg.solve(info, np.einsum('nia,nij,nj->a', jac, w, r) - prior @ q)
            q = q + step
            if np.abs(step).max() < 1e-9:
                break
        jac = _jacobian(q[0], o, ds)
        return q, np.einsum('nia,nij,njb->ab', jac, w, jac) + prior


def _jacobian(theta: float, o: np.ndarray, ds: np.ndarray) -> np.ndarray:
    """(n, 2, 5): d (R o + shift - drift ds) / d (theta, shift, drift)."""
    n = len(o)
    jac = np.zeros((n, 2, 5))
    jac[:, :, 0] = o @ _drot(theta).T
    jac[:, :, 1:3] = np.eye(2)
    jac[:, :, 3:5] = -ds[:, None, None] * np.eye(2)
    return jac
