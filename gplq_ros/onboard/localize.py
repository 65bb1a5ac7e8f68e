"""GNSS-free position from the place descriptor (numpy only): retrieval in a ``PlaceMap``,
a position from the top-k tiles, refined by the boundary map with a covariance from its
evidence, and a Kalman filter that publishes only what independent measurements support.

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
3. **Refinement** (with the frame's boundary map): ``BoundaryMatcher`` searches position, yaw
   and height around the retrieval (or around the track's prediction) for the best match of the
   frame's boundary map with the map's boundary orthomap. Its covariance comes from the match's
   evidence (``Match``): the score surface's spread within the standard error of a score (a
   sharp peak: small; a flat ridge or a second peak nearly as good: large), plus
   ``refine_floor_m``^2. A measurement is *weak* (no evidence for a track) when the match is
   below ``min_ncc``, its best lies at the edge of the search (position or height), the retrieval
   margin is below ``min_margin``, or its sigma exceeds ``max_measurement_sigma_m``.
4. **Filter**: state x, y, vx, vy; white-acceleration process noise ``accel_sigma``, or, when an
   odometry pose comes with the frame, the odometry mapped through the track's alignment
   (``onboard.odomfit``: rotation, shift and drift of the odometry frame fitted at once to the
   track's measurements, one per ``odom_anchor_spacing_m`` of travel, the newest ``odom_window``,
   wrong ones outvoted; its covariance grows with the travel since them, ``odom_sigma_frac`` per
   metre, and with the rotation's uncertainty). With the odometry aligned, a frame without a
   measurement the track can take still gets a fix (*coasted*) under the rules below (confirmed
   within ``confirm_window_s``, sigma at most ``max_fix_sigma_m``). Integrity first: every frame
   gets an *independent* measurement (retrieval + refinement around it, never around the track;
   with the verification, a retrieval place at the track's verified registration takes that over
   and then counts as no independent evidence: ``_verify``).

   * A track starts from one non-weak independent measurement and gives fixes once
     ``init_fixes`` of them agreed with it (chi-square gate ``gate_chi2`` and reachable at
     ``max_speed_mps``); one that does not agree starts a new candidate. The second gives the
     velocity; from the third on an agreement counts only when the motion since the track's
     last update is known to ``max_agreement_sigma_m`` (else it would say nothing: seconds
     between frames without odometry), and so does a confirmation of a running track. The
     measurements that start a track span at least ``init_span_s`` (frames 0.1 s apart see
     the same view: their agreement is not independent).
   * A confirmed track also searches around its prediction (the *tracked* measurement). When
     the independent measurement agrees, it confirms the track; when a non-weak independent
     measurement disagrees and matches the frame clearly better than the track's search
     (``conflict_sigmas`` standard errors), the frame gives no fix (``conflict``), and
     ``drop_after`` such frames in a row drop the track and start a new one there. When the
     independent measurement is weak, the tracked one (if not weak and inside the gate)
     updates the filter.
   * A fix is published only while an independent measurement agreed with the track within
     ``confirm_window_s``, and no longer than the track's confirmations span (else
     ``unconfirmed``: a young track cannot coast long) and its sigma is at most ``max_fix_sigma_m``
     (else ``uncertain``). ``reset_after`` rejections in a row lose the track; a clock jump
     back restarts it.

Without the refinement (``refine`` false or no boundary map) the retrieval measurement is the
independent measurement, weak only below ``min_margin``.

A frame yields a fix (``Estimate.fix``) only then: the fix is the filter's posterior position and
covariance, the measurement's yaw. Otherwise the estimate carries the reason and no position is
published. The height above ground, when given, narrows the refinement's height search to
``height_tolerance`` around it.
"""
import copy
import math
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from gplq_ros.onboard.aiding import OdomPose
from gplq_ros.onboard.mapstore import WholeMap
from gplq_ros.onboard.odomfit import OdometryAlignment, rotation
from gplq_ros.onboard.settings import setting, validate
from gplq_ros.onboard.verify import Verifier, VerifyConfig


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
    sigma_floor_m: float = setting(1.0, 'smallest retrieval measurement standard deviation, m', range=(0.01, 1000.0))
    measurement_scale: float = setting(16.0, 'multiplier on the retrieval measurement covariance',
                                       range=(0.01, 1000.0))
    accel_sigma: float = setting(3.0, 'filter process noise, white acceleration, m/s^2', range=(0.001, 100.0))
    max_speed_mps: float = setting(20.0, 'a fix farther than this speed allows since the last fix is rejected',
                                   range=(0.1, 500.0))
    gate_chi2: float = setting(13.82, 'innovation gate (chi-square, 2 dof)', range=(0.1, 1000.0))
    init_fixes: int = setting(3, 'independent measurements that agree with a motion to start a track',
                              range=(1, 100))
    init_span_s: float = setting(2.0, 'the independent measurements that start a track span at least this long: '
                                 'consecutive frames at 10 Hz show nearly the same view, their agreement is not '
                                 'independent evidence', range=(0.0, 3600.0))
    reset_after: int = setting(10, 'rejections in a row before the filter restarts', range=(1, 10000))
    refine: bool = setting(True, "refine the retrieved position by matching the frame's boundary map (topic "
                           "boundary_map, same stamp as the descriptor) against the map's boundary orthomap")
    near_search: bool = setting(True, "tracking: the tracked measurement's retrieval scores only the tiles near "
                                "the filter's prediction (a spatial index; a sharded map loads only the shards "
                                "there); false: the whole map scored for it too. The independent measurement always "
                                "searches the whole map")
    search_radius_m: float = setting(12.0, 'refinement: translations searched around the retrieved position, m',
                                     range=(0.5, 100.0))
    yaw_span_deg: float = setting(20.0, 'refinement: yaws searched around the retrieved yaw, degrees',
                                  range=(0.0, 90.0))
    min_ncc: float = setting(0.3, 'refinement: a weaker boundary-map match keeps the retrieval measurement',
                             range=(-1.0, 1.0))
    refine_floor_m: float = setting(1.5, 'refinement: smallest standard deviation of a refined position (map '
                                    'georeference, relief), added to what the match surface gives, m',
                                    range=(0.01, 100.0))
    ncc_cells_per_sample: float = setting(4.0, 'refinement: boundary-map cells per independent sample (their '
                                          'spatial correlation), for the standard error of a match score',
                                          range=(1.0, 100.0))
    height_ratio_min: float = setting(0.7, 'refinement without a track: lowest height searched, times the lowest '
                                      'map height', range=(0.1, 1.0))
    height_ratio_max: float = setting(1.6, 'refinement without a track: highest height searched, times the highest '
                                      'map height', range=(1.0, 10.0))
    max_measurement_sigma_m: float = setting(6.0, 'an independent measurement with a larger standard deviation '
                                             'neither starts nor confirms a track, m', range=(0.1, 1000.0))
    max_agreement_sigma_m: float = setting(12.0, 'an independent measurement confirms a track only when the motion '
                                           'since the track\'s last update is known this well (standard deviation, '
                                           'm): a vaguer prediction, e.g. seconds between frames without odometry, '
                                           'agrees with almost anything', range=(0.1, 1000.0))
    confirm_window_s: float = setting(10.0, 'a track gives fixes only while an independent measurement agreed '
                                      'with it within this time, s', range=(0.0, 3600.0))
    drop_after: int = setting(2, 'independent measurements in a row that confidently contradict the track drop '
                              'it', range=(1, 100))
    conflict_sigmas: float = setting(2.0, 'an independent match contradicts the track when it scores this many '
                                     'standard errors better than the track\'s match', range=(0.0, 100.0))
    max_fix_sigma_m: float = setting(10.0, 'no fix is published with a larger standard deviation, m',
                                     range=(0.1, 10000.0))
    odom_sigma_frac: float = setting(0.1, 'odometry input: standard deviation of its displacement per metre '
                                     'travelled', range=(0.0, 10.0))
    odom_window: int = setting(30, 'odometry input: the newest measurements of the track (with the odometry pose of '
                               'their frames) that the odometry frame is fitted to, outliers outvoted',
                               range=(3, 1000))
    odom_anchor_spacing_m: float = setting(5.0, 'odometry input: one measurement per this much odometry travel '
                                           'enters the fit (the better of two closer ones): frames a few metres '
                                           'apart see nearly the same view, their errors are not independent, m',
                                           range=(0.0, 1000.0))
    odom_min_span_m: float = setting(20.0, 'odometry input: the fitted measurements span at least this much odometry '
                                     'travel before the odometry carries the track (its rotation to the map is '
                                     'unknown over a shorter baseline), m', range=(0.0, 10000.0))
    height_tolerance: float = setting(0.1, 'height input: relative error of the height above ground, for the '
                                      'refinement\'s height search', range=(0.0, 1.0))
    verified_confirms: bool = setting(True, 'a verified measurement (the frame registered to the map\'s orthophoto '
                                      'layer: onboard.verify) starts and confirms a track on its own; false: it '
                                      'counts as one of init_fixes like a refined one')

    def __post_init__(self):
        validate(self)


class FilterFault(RuntimeError):
    """The filter failed numerically on a frame (numpy.linalg.LinAlgError, an overflow, a
    non-finite state or covariance); ``Localizer.update`` left the filter as it was before
    the frame. Not a ValueError: a malformed input is one."""


@dataclass
class Match:
    """One boundary-map search: the best candidate and the evidence around it."""
    ncc: float
    xy: np.ndarray
    yaw: float
    height: float
    cov: np.ndarray          # (2, 2) position covariance from the score surface (without the floor)
    se: float                # standard error of a score (NCC) of this frame
    second: float            # best score farther than two grid steps from the best
    edge: str                # '' or why the best may lie outside the search: 'position', 'height'


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
    ncc_se: float = float('nan')                 # standard error of the match score
    second_ncc: float = float('nan')             # best match score away from the best
    weak: str = ''           # why it is no evidence for a track ('' = usable): see Localizer.usable
    inliers: int = 0         # verification (onboard.verify): inliers of the accepted candidate (0: not verified)
    verified: Optional[list] = None              # the candidates' ``Verified`` results, when verification ran
    candidates: Optional[list] = None            # distinct retrieved places [(xy, height, score)], best first
    shared: bool = False     # the verification of the frame's tracked measurement, taken over (Localizer._verify)

    @property
    def evidence(self):
        """(score, standard error) of the measurement's match: the verification's inlier count
        (Poisson: sqrt), else the boundary match's NCC; (nan, nan) without either."""
        if self.inliers:
            return float(self.inliers), math.sqrt(self.inliers)
        return self.ncc, self.ncc_se

    @property
    def sigma(self) -> float:
        return largest_sigma(self.cov)


@dataclass
class Estimate:
    t: float
    measurement: Optional[Measurement]
    fix: bool = False
    reason: str = ''         # why no fix: see Localizer (REASONS)
    xy: Optional[np.ndarray] = None
    cov: Optional[np.ndarray] = None
    tracked: Optional[Measurement] = None        # the measurement searched around the track, when there was one
    independent: Optional[Measurement] = None    # the frame's independent measurement (retrieval + refinement)
    coasted: bool = False    # a fix carried by the odometry from the track's measurements, none of this frame


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


def wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


class BoundaryMatcher:
    """Position refinement: the frame's patch-grid boundary map against the map's boundary
    orthomap. A candidate pose (x, y, yaw, height) puts each patch centre of the frame at a
    point of the orthomap (the flight simulator's camera model); its score is the normalized
    cross-correlation of the frame's values with the orthomap's there (bilinear). Coarse
    search: translations every ``STEP`` m within ``radius``, yaws every 10 deg within ``span``,
    heights from ``ratios[0]`` x the lowest to ``ratios[1]`` x the highest map height (ratio
    ``HEIGHT_RATIO``) or those given; fine search around the best: 0.5 m, 2.5 deg, heights
    1.035^(-2..2) (acquisition; tracking: ratio 1.05).

    The evidence (``Match``): n = the grid's cells / ``cells_per_sample`` independent samples
    (neighbouring cells are correlated); each searched position weighs its likelihood relative
    to the best under Gaussian residuals, ((1 - best^2) / (1 - r^2))^(n / 2) with r its best score
    over yaw and height, and the weighted spread of the positions is the match's covariance: a
    sharp, single peak gives the grid's quantization, a flat ridge or a second peak nearly as good
    as the best a spread over them. A score's standard error ``se`` = (1 - ncc^2) / sqrt(n - 3)
    (Fisher) says when another match is clearly better."""

    STEP = 3.0              # coarse translation step, m (the fine search covers +-STEP / 2)
    HEIGHT_RATIO = 1.15     # coarse height step without a track (the fine search covers +-7 %)

    def __init__(self, pmap, ratios=(0.7, 1.6), cells_per_sample: float = 4.0):
        mc = pmap.config
        self.map = pmap if hasattr(pmap, 'boundary_window') else WholeMap(pmap)
        self.res, self.mc = mc.boundary_res_m, mc
        lo, hi = ratios[0] * min(mc.heights_m), ratios[1] * max(mc.heights_m)
        self.heights = lo * self.HEIGHT_RATIO ** np.arange(int(math.log(hi / lo) / math.log(self.HEIGHT_RATIO)) + 2)
        self.cells_per_sample = cells_per_sample
        self._pattern = {}

    def pattern(self, grid_hw):
        """Patch centres of a (gh, gw) grid, camera pixels relative to the image centre."""
        if grid_hw not in self._pattern:
            gh, gw = grid_hw
            w, h = self.mc.width, self.mc.height
            jj, ii = np.meshgrid(np.arange(gw), np.arange(gh))
            u = (jj.ravel() + 0.5) * w / gw - 0.5 - (w - 1) / 2
            v = (ii.ravel() + 0.5) * h / gh - 0.5 - (h - 1) / 2
            self._pattern[grid_hw] = (u.astype(np.float32), v.astype(np.float32))
        return self._pattern[grid_hw]

    def scores(self, q: np.ndarray, xy, offsets: np.ndarray, yaws, heights):
        """NCC of every (yaw, height, offset) candidate: array (len(yaws), len(heights), len(offsets))."""
        u, v = self.pattern(q.shape)
        qn = q.ravel() - q.mean()
        qn = (qn / max(float(np.linalg.norm(qn)), 1e-12)).astype(np.float32)
        yaws, heights = np.asarray(yaws), np.asarray(heights)
        c, s = np.cos(yaws)[:, None, None], np.sin(yaws)[:, None, None]
        m = np.array([self.mc.scale(h) * self.mc.gsd_m for h in heights])[None, :, None]   # metres per camera px
        # image right = (cos yaw, sin yaw) in map metres, image down = (sin yaw, -cos yaw); orthomap pixels
        ex = ((m * (u * c + v * s)) / self.res).astype(np.float32)                         # (Y, H, P)
        ey = ((m * (u * s - v * c)) / -self.res).astype(np.float32)
        ox = ((xy[0] + offsets[:, 0]) / self.res).astype(np.float32)
        oy = ((xy[1] + offsets[:, 1]) / -self.res).astype(np.float32)
        n = ex.shape[0] * ex.shape[1] * len(offsets)
        mx = (ox[None, None, :, None] + ex[:, :, None, :]).reshape(n, -1)
        my = (oy[None, None, :, None] + ey[:, :, None, :]).reshape(n, -1)
        # the orthomap around the candidates (a sharded map loads only the shards they fall in)
        g, r0, c0 = self.map.boundary_window(int(math.floor(my.min())) - 2, int(math.floor(mx.min())) - 2,
                                             int(math.ceil(my.max())) + 3, int(math.ceil(mx.max())) + 3)
        if r0 or c0:
            mx, my = mx - np.float32(c0), my - np.float32(r0)
        vals = cv2.remap(g, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        vals -= vals.mean(axis=1, keepdims=True)
        ncc = (vals @ qn) / np.maximum(np.sqrt(np.einsum('ij,ij->i', vals, vals)), 1e-12)
        return ncc.reshape(ex.shape[0], ex.shape[1], len(offsets))

    @staticmethod
    def _grid(radius: float, step: float) -> np.ndarray:
        r = np.arange(-radius, radius + 1e-9, step)
        gx, gy = np.meshgrid(r, r)
        return np.stack([gx.ravel(), gy.ravel()], axis=1)

    def standard_error(self, ncc: float, cells: int) -> float:
        n = max(cells / self.cells_per_sample, 4.0)
        return max((1.0 - min(ncc, 0.999) ** 2) / math.sqrt(n - 3.0), 1e-3)

    def refine(self, q: np.ndarray, xy: np.ndarray, yaw: float, radius: float, span_deg: float,
               height: Optional[float] = None, heights=None, height_bounded: bool = False,
               height_steps: int = 1) -> Match:
        """The best candidate around (xy, yaw) and its evidence. Without ``height`` (acquisition):
        ``heights`` (default every height of the map's range), yaws every 10 deg, then a fine search
        +-STEP/2, +-5 deg. With ``height`` (tracking: the last fix's): the three heights next to it
        (ratio 1.1), yaws every 5 deg, then +-1 m, +-2.5 deg."""
        tracking = height is not None
        yaws = yaw + np.radians(np.arange(-span_deg, span_deg + 1e-9, 5.0 if tracking else 10.0))
        offs = self._grid(radius, self.STEP)
        if tracking:
            heights = height * 1.1 ** np.arange(-height_steps, height_steps + 1)
        elif heights is None:
            heights = self.heights
        heights = np.asarray(heights, float)
        sc = self.scores(q, xy, offs, yaws, heights)
        iy, ih, io = np.unravel_index(int(np.argmax(sc)), sc.shape)
        # evidence: the score surface over positions (best over yaw and height at each)
        prof = sc.max(axis=(0, 1)).astype(np.float64)
        best = float(prof[io])
        se = self.standard_error(best, q.size)
        n_eff = max(q.size / self.cells_per_sample, 4.0)
        r2 = np.minimum(prof, 0.999) ** 2
        # relative likelihood of each position under Gaussian residuals with n_eff independent samples
        w = np.exp(-0.5 * n_eff * np.log(np.maximum(1.0 - r2, 1e-6) / max(1.0 - min(best, 0.999) ** 2, 1e-6)))
        w /= w.sum()
        p = offs + xy
        mean = (w[:, None] * p).sum(axis=0)
        dev = p - mean
        cov = (w[:, None, None] * dev[:, :, None] * dev[:, None, :]).sum(axis=0) + self.STEP ** 2 / 12 * np.eye(2)
        far = np.hypot(*(offs - offs[io]).T) > 2 * self.STEP + 1e-6
        second = float(prof[far].max()) if far.any() else float('nan')
        edge = ''
        if len(offs) > 1 and np.abs(offs[io]).max() >= radius - self.STEP / 2 - 1e-9:
            edge = 'position'
        elif not tracking and not height_bounded and len(heights) > 2 and ih in (0, len(heights) - 1):
            edge = 'height'
        xy1, yaw1, h1 = xy + offs[io], yaws[iy], heights[ih]
        yaws = yaw1 + np.radians([-2.5, 0.0, 2.5] if tracking else [-5.0, -2.5, 0.0, 2.5, 5.0])
        heights = h1 * (1.05 ** np.arange(-1, 2) if tracking else 1.035 ** np.arange(-2, 3))
        offs = self._grid(1.0 if tracking else self.STEP / 2, 0.5)
        sc = self.scores(q, xy1, offs, yaws, heights)
        iy, ih, io = np.unravel_index(int(np.argmax(sc)), sc.shape)
        return Match(float(sc[iy, ih, io]), xy1 + offs[io], float(yaws[iy]), float(heights[ih]), cov, se, second,
                     edge)


class Localizer:
    """GNSS-free localization against one ``PlaceMap`` (steps in the module docstring).

    ``update(descriptor, t, boundary=None, odom=None, height_m=None)`` takes one frame's VLAD
    descriptor (and its boundary map, for the refinement) at time ``t`` (the frame's stamp),
    optionally the odometry pose and the height above ground at ``t``, and returns an
    ``Estimate``: a fix (the filter's posterior position and covariance, the measurement's
    yaw) when the evidence supports one, else the reason there is none. ``update`` is
    transactional: a frame that raises (ValueError, ``FilterFault``) leaves the filter as it
    was. ``measure`` is the independent measurement alone (retrieval plus refinement), without
    the filter; ``reset`` forgets the track (also done on a clock jump back); ``state``/``restore``
    snapshot it. Counters for diagnostics: ``frames``, ``fixes`` (of them ``coasted``: carried by the
    odometry, no measurement of their frame), ``track_drops``. Use from one
    thread (the node's worker)."""

    # within this time of the filter's state the height changes little: the independent search takes
    # the three coarse heights around the track's (else every height of the map's range)
    NEAR_HEIGHT_WITHIN_S = 1.0

    REASONS = ('weak', 'ambiguous', 'initialising', 'jump', 'gate', 'conflict', 'unconfirmed', 'uncertain', 'lost')

    def __init__(self, pmap, cfg: LocalizerConfig = LocalizerConfig(), vcfg: VerifyConfig = VerifyConfig()):
        self.map, self.cfg, self.vcfg = (pmap if hasattr(pmap, 'search') else WholeMap(pmap)), cfg, vcfg
        mc = pmap.config
        self.grid_var = mc.stride_m ** 2 / 12.0
        self.heading_var = (2 * math.pi / mc.headings) ** 2 / 12.0
        self.matcher = BoundaryMatcher(pmap, (cfg.height_ratio_min, cfg.height_ratio_max),
                                       cfg.ncc_cells_per_sample) if cfg.refine else None
        # the verification needs the map's orthophoto layer (version 2 maps)
        self.verifier = Verifier(self.map, vcfg) if vcfg.verify and getattr(self.map, 'has_ortho', False) else None
        self.reset()
        self.fixes = self.frames = self.rejected_total = self.track_drops = self.coasted = 0
        self.odom_last: Optional[OdomPose] = None    # the last frame's odometry pose
        self.odom_path = 0.0                         # odometry path length travelled up to it, m
        self.frame_t: Optional[float] = None         # the last frame's time (the map keypoints' prefetch)

    def reset(self) -> None:
        self.x: Optional[np.ndarray] = None          # (4,) x, y, vx, vy
        self.P: Optional[np.ndarray] = None
        self.t: Optional[float] = None               # time of the filter state
        self.agreeing = 0                            # independent measurements the track has agreed with
        self.rejected = 0
        self.conflicts = 0                           # independent measurements in a row contradicting the track
        self.confirmed_t: Optional[float] = None     # last time an independent measurement agreed with the track
        self.start_t: Optional[float] = None         # time of the track's first measurement
        self.last_fix: Optional[tuple] = None        # (t, xy, sigma)
        self.last_refined: Optional[tuple] = None    # (yaw, height) of the last refined measurement in the track
        self.odom: Optional[OdomPose] = None         # odometry at the filter's time
        self.align = OdometryAlignment(self.cfg.odom_sigma_frac, self.cfg.odom_window, self.cfg.odom_min_span_m,
                                       spacing_m=self.cfg.odom_anchor_spacing_m)

    def warm(self) -> int:
        """The verification's map keypoints of a small map's whole orthophoto layer, detected in the
        background (``Verifier.warm``); call when the localizer is made, before the first frame. The
        number of blocks submitted."""
        return self.verifier.warm() if self.verifier is not None else 0

    # -- 1 + 2: one frame's measurement ---------------------------------------------------------------
    def frame_features(self, image: Optional[np.ndarray]):
        """The frame's keypoints for the verification (None without an image or a verifier)."""
        if image is None or self.verifier is None:
            return None
        return self.verifier.frame_features(image)

    def measure(self, descriptor: np.ndarray, boundary: Optional[np.ndarray] = None, prior=None,
                height_m: Optional[float] = None, near_height: Optional[float] = None, frame=None,
                candidates: Optional[int] = None, known: Optional[Measurement] = None) -> Measurement:
        """The retrieval measurement; refined with ``boundary`` (the frame's (gh, gw) boundary map)
        when the localizer refines and the match reaches ``min_ncc``. The refinement searches
        around the retrieval (``search_radius_m``, ``yaw_span_deg``) at the heights within
        ``height_tolerance`` of ``height_m`` (the height input), else at the three coarse heights
        around ``near_height`` (a confirmed track's height: the position stays independent of the
        track), else at every height of the map's range; or, with ``prior`` = (xy, radius, yaw,
        height, height steps) from the running filter, around that. With the frame's keypoints
        (``frame``) and a verifier, the verification replaces the refinement (``_verify``;
        ``candidates``: at most this many of the retrieval's places, default ``verify_candidates``;
        ``known``: the frame's verified tracked measurement, see ``_verify``).
        ``weak`` says why it is no evidence for a track."""
        near = None if prior is None or not self.cfg.near_search else \
            (prior[0], prior[1] + self.cfg.cluster_radius_m + self.map.config.stride_m)
        meas = self._retrieve(descriptor, near)
        meas.retrieval_xy, meas.retrieval_yaw = meas.xy.copy(), meas.yaw
        if frame is not None and self.verifier is not None:
            return self._verify(meas, frame, prior, height_m, near_height, candidates, known)
        if boundary is None or self.matcher is None:          # retrieval only: the margin is the evidence
            meas.weak = 'ambiguous' if meas.margin < self.cfg.min_margin else ''
            return meas
        b = patch_grid(boundary)
        cfg = self.cfg
        if prior is None:
            heights, bounded = None, False
            if height_m is not None:
                tol = max(cfg.height_tolerance, 0.05)
                heights, bounded = height_m * np.exp(np.linspace(-math.log1p(tol), math.log1p(tol), 3)), True
            elif near_height is not None and np.isfinite(near_height):
                heights = near_height * self.matcher.HEIGHT_RATIO ** np.arange(-1, 2)
            m = self.matcher.refine(b, meas.xy, meas.yaw, cfg.search_radius_m, cfg.yaw_span_deg, heights=heights,
                                    height_bounded=bounded)
        else:
            pxy, radius, pyaw, ph, steps = prior
            m = self.matcher.refine(b, pxy, pyaw, radius, min(10.0, cfg.yaw_span_deg),
                                    height_m if height_m is not None else ph, height_steps=steps)
        meas.ncc, meas.ncc_se, meas.second_ncc = m.ncc, m.se, m.second
        if m.ncc >= cfg.min_ncc:
            self._refined(meas, m)
        meas.weak = self._weakness(meas, m.edge)
        return meas

    def _verify(self, meas: Measurement, frame, prior, height_m: Optional[float],
                near_height: Optional[float], candidates: Optional[int] = None,
                known: Optional[Measurement] = None) -> Measurement:
        """The verified measurement (``onboard.verify``): the frame registered to the map's
        orthophoto layer around the retrieval's distinct places (best first, ``verify_candidates``
        or ``candidates``) or, with ``prior`` (the running filter's), around the prediction only.
        The first verified
        candidate gives the measurement; another place verified as well (farther than
        ``cluster_radius_m`` plus 3 sigma, with at least half the inliers) makes the frame
        ambiguous. None verified: weak, with the first candidate's reason. With ``known`` (this frame's
        measurement verified around the track's prediction) and one candidate within
        ``cluster_radius_m`` of its position (the same place), the candidate takes that registration
        (``shared``) instead of registering the same ground again; it is then no independent
        evidence (``_update``: it neither confirms nor contradicts the track)."""
        cfg, mc = self.cfg, self.map.config
        if height_m is not None:
            tol = max(cfg.height_tolerance, 0.05)
            bounds = (height_m / (1 + 2 * tol), height_m * (1 + 2 * tol))
        else:
            bounds = (cfg.height_ratio_min * min(mc.heights_m), cfg.height_ratio_max * max(mc.heights_m))
        if prior is not None:
            pxy, _, _, ph, _ = prior
            cands = [(np.asarray(pxy, float), height_m or ph, meas.score)]
        else:
            cands = meas.candidates[:min(self.vcfg.verify_candidates, candidates or self.vcfg.verify_candidates)]
            if height_m is not None or (near_height is not None and np.isfinite(near_height)):
                cands = [(xy, height_m or near_height, sc) for xy, _, sc in cands]
        if known is not None and known.inliers and not known.weak and len(cands) == 1 and \
                float(np.hypot(*(np.asarray(cands[0][0], float) - known.xy))) <= cfg.cluster_radius_m:
            meas.xy, meas.cov, meas.yaw, meas.yaw_var = known.xy.copy(), known.cov.copy(), known.yaw, known.yaw_var
            meas.height_m, meas.inliers, meas.verified = known.height_m, known.inliers, known.verified
            meas.shared = True
            meas.weak = f'sigma {meas.sigma:.1f} m' if meas.sigma > cfg.max_measurement_sigma_m else ''
            return meas
        results = [self.verifier.verify(frame, xy, h, bounds) for xy, h, _ in cands]
        meas.verified = results
        good = [v for v in results if v.ok]
        if not good:
            meas.weak = f'not verified ({results[0].reason})' if results else 'not verified'
            return meas
        best = good[0]
        for v in good[1:]:
            d = float(np.hypot(*(v.xy - best.xy)))
            if d > cfg.cluster_radius_m + 3 * (largest_sigma(v.cov) + largest_sigma(best.cov)) and \
                    v.inliers >= 0.5 * best.inliers:
                meas.weak = 'ambiguous'
                meas.inliers = best.inliers
                return meas
        meas.xy, meas.cov, meas.yaw, meas.yaw_var = best.xy, best.cov, best.yaw, best.yaw_var
        meas.height_m, meas.inliers = best.height_m, best.inliers
        meas.weak = f'sigma {meas.sigma:.1f} m' if meas.sigma > cfg.max_measurement_sigma_m else ''
        return meas

    def _weakness(self, meas: Measurement, edge: str = '') -> str:
        """Why a refined measurement is no evidence for a track ('' = it is): the match below
        ``min_ncc``, the best match at the edge of its search, a retrieval margin below
        ``min_margin``, or a standard deviation above ``max_measurement_sigma_m``."""
        if not np.isfinite(meas.height_m):
            return 'not refined'
        if edge:
            return f'best match at the {edge} edge of the search'
        if meas.margin < self.cfg.min_margin:
            return 'ambiguous'
        if meas.sigma > self.cfg.max_measurement_sigma_m:
            return f'sigma {meas.sigma:.1f} m'
        return ''

    def _refined(self, meas: Measurement, m: Match) -> None:
        """``meas`` takes a refinement's position, yaw and height; its covariance is the match
        surface's spread plus ``refine_floor_m``^2."""
        meas.xy, meas.yaw, meas.height_m = m.xy, m.yaw, m.height
        meas.cov = m.cov + self.cfg.refine_floor_m ** 2 * np.eye(2)
        meas.yaw_var = math.radians(2.5) ** 2

    def _retrieve(self, descriptor: np.ndarray, near=None) -> Measurement:
        """The top-k tiles over the whole map (``near`` None: the map's global search) or among
        the tiles within ``near`` = (xy, radius) (the tracking search: a spatial index, only
        the shards there), and the measurement they give (module doc, steps 1-2)."""
        cfg, m = self.cfg, self.map
        q = m.project(descriptor)
        idx, scores = m.search(q, cfg.top_k, near)
        if not len(idx):                    # the prediction left the map: the global search
            idx, scores = m.search(q, cfg.top_k)
        s, pos = np.asarray(scores, np.float64), m.poses[idx]
        d = np.hypot(*(pos[:, :2] - pos[0, :2]).T)
        near = d <= cfg.cluster_radius_m
        far = s[~near] if (~near).any() else None
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
        # distinct places of the top-k, best first (for the verification)
        cands = []
        for j in range(len(idx)):
            if all(float(np.hypot(*(pos[j, :2] - c[0]))) > cfg.cluster_radius_m for c in cands):
                cands.append((pos[j, :2].copy(), float(pos[j, 3]), float(s[j])))
        return Measurement(xy, cov, yaw, yaw_spread + self.heading_var, float(s[0]), margin, int(idx[0]),
                           candidates=cands)

    # -- 3: the filter ---------------------------------------------------------------------------------
    def _predicted(self, t: float, odom: Optional[OdomPose]):
        """(F, Q, u, aligned): the prediction x' = F x + u, P' = F P F^T + Q from the filter's time to
        ``t``: constant velocity with white acceleration, or, with odometry once the track's
        measurements have placed the odometry frame on the map (``onboard.odomfit``), the odometry
        pose mapped through that alignment (the prediction then does not depend on the filter's
        previous state: the alignment already holds the track's measurements)."""
        dt = t - self.t
        f = np.eye(4)
        u = np.zeros(4)
        align = self.align.alignment() if odom is not None else None
        if align is not None:
            xy, cov = align.predict((odom.x, odom.y), self.odom_path)
            f[:] = 0.0
            u[:2] = xy
            qm = np.zeros((4, 4))
            qm[:2, :2] = cov
            if self.odom is not None and dt > 1e-6:
                d = rotation(align.theta) @ np.array([odom.x - self.odom.x, odom.y - self.odom.y])   # the motion
                u[2:] = d / dt
                qm[2:, 2:] = np.eye(2) * ((self.cfg.odom_sigma_frac * float(np.hypot(*d))) ** 2 + 0.25) / dt ** 2
            else:
                qm[2:, 2:] = np.eye(2) * (self.cfg.max_speed_mps / 2) ** 2
            return f, qm, u, True
        f[0, 2] = f[1, 3] = dt
        q1 = self.cfg.accel_sigma ** 2 * np.array([[dt ** 4 / 4, dt ** 3 / 2], [dt ** 3 / 2, dt ** 2]])
        qm = np.zeros((4, 4))
        qm[np.ix_([0, 2], [0, 2])] = q1
        qm[np.ix_([1, 3], [1, 3])] = q1
        return f, qm, u, False

    def _prediction(self, t: float, odom: Optional[OdomPose]):
        """(x, P, aligned): the filter's state predicted to ``t`` (``_predicted``), once per frame."""
        f, qm, u, aligned = self._predicted(t, odom)
        return f @ self.x + u, f @ self.P @ f.T + qm, aligned

    def _predict(self, t: float, odom: Optional[OdomPose], pred) -> None:
        """The filter moves to ``t``: its state becomes the prediction ``pred``."""
        self.x, self.P, self.t = pred[0], pred[1], t
        if odom is not None:
            self.odom = odom

    def _prior(self, t: float, pred):
        """While tracking with refined fixes: the search centre, radius (3 sigma of the predicted
        position + 2 m, at least 4 m, at most search_radius_m), yaw and height of the last fix, and
        the height steps (ratio 1.1) searched either side: 1, or 2 when the filter's state is
        ``NEAR_HEIGHT_WITHIN_S`` or more old."""
        if self.x is None or self.last_refined is None or (self.matcher is None and self.verifier is None) or \
                self.agreeing < self.cfg.init_fixes:
            return None
        xy, pv = pred[0][:2], pred[1][:2, :2]
        radius = min(max(3 * math.sqrt(float(max(np.linalg.eigvalsh(pv)))) + 2.0, 4.0), self.cfg.search_radius_m)
        steps = 1 if t - self.t < self.NEAR_HEIGHT_WITHIN_S else 2
        return xy, radius, self.last_refined[0], self.last_refined[1], steps

    def _motion_sigma(self, pred) -> float:
        """Standard deviation (worst axis) that the motion to the prediction ``pred`` adds to the
        position: how well the track knows where the drone went since its last update (with the
        odometry aligned: how well the prediction knows where the drone is)."""
        if pred[2]:
            return largest_sigma(pred[1][:2, :2])
        added = pred[1][:2, :2] - self.P[:2, :2]
        return math.sqrt(max(float(np.linalg.eigvalsh(0.5 * (added + added.T)).max()), 0.0))

    def _chi2(self, pred, meas: Measurement) -> float:
        """Mahalanobis distance squared of ``meas`` from the filter's prediction ``pred``."""
        innov = meas.xy - pred[0][:2]
        s = pred[1][:2, :2] + meas.cov
        return float(innov @ np.linalg.solve(s, innov))

    def _reachable(self, t: float, meas: Measurement) -> bool:
        lt, lxy, lsig = self.last_fix
        reach = self.cfg.max_speed_mps * max(t - lt, 0.0) + 3 * (meas.sigma + lsig)
        return float(np.hypot(*(meas.xy - lxy))) <= reach

    def _begin(self, t: float, meas: Measurement, odom: Optional[OdomPose]) -> Estimate:
        """A candidate track from one independent measurement: position = the measurement, velocity
        unknown (standard deviation max_speed / 2). It gives fixes once ``init_fixes`` independent
        measurements agreed with it (``_update``)."""
        self.reset()
        self.x = np.concatenate([meas.xy, np.zeros(2)])
        self.P = np.zeros((4, 4))
        self.P[:2, :2] = meas.cov
        self.P[2:, 2:] = np.eye(2) * (self.cfg.max_speed_mps / 2) ** 2
        self.t, self.odom, self.agreeing, self.start_t = t, odom, 1, t
        self._remember(t, meas, odom)
        if self.cfg.init_fixes <= 1 or self._verified(meas):
            self.agreeing = self.cfg.init_fixes
            self.confirmed_t = t
            return self._fix(t, meas)
        return Estimate(t, meas, reason='initialising', independent=meas)

    def _verified(self, meas: Optional[Measurement]) -> bool:
        """Whether ``meas`` is geometric evidence on its own (``verified_confirms``)."""
        return meas is not None and bool(meas.inliers) and not meas.weak and self.cfg.verified_confirms

    def _remember(self, t: float, meas: Measurement, odom: Optional[OdomPose]) -> None:
        """A measurement taken into the track: its refined yaw/height for the next search, the
        last fix for the reach check, and the measurement with its frame's odometry pose as an anchor of
        the odometry alignment."""
        self.last_refined = (meas.yaw, meas.height_m) if np.isfinite(meas.height_m) else None
        self.last_fix = (t, self.x[:2].copy(), largest_sigma(self.P[:2, :2]))
        if odom is not None and not meas.weak:
            self.align.add((odom.x, odom.y), self.odom_path, meas.xy, meas.cov, self._floor(meas) or 0.0)

    def _fix(self, t: float, meas: Measurement, tracked: Optional[Measurement] = None,
             independent: Optional[Measurement] = None) -> Estimate:
        """The filter's posterior as a fix, when the track is confirmed and certain enough."""
        cov = 0.5 * (self.P[:2, :2] + self.P[:2, :2].T)
        sigma = largest_sigma(cov)
        independent = independent or meas
        # a track coasts without confirmation at most as long as its confirmations span (up to the window)
        window = min(self.cfg.confirm_window_s, max(self.confirmed_t - self.start_t, self.cfg.init_span_s)) \
            if self.confirmed_t is not None else 0.0
        if self.confirmed_t is None or t - self.confirmed_t > window:
            return Estimate(t, meas, reason='unconfirmed', tracked=tracked, independent=independent)
        if sigma > self.cfg.max_fix_sigma_m:
            return Estimate(t, meas, reason='uncertain', tracked=tracked, independent=independent)
        self.fixes += 1
        return Estimate(t, meas, fix=True, xy=self.x[:2].copy(), cov=cov, tracked=tracked, independent=independent)

    def _floor(self, meas: Measurement) -> Optional[float]:
        """The standard deviation of the error ``meas`` shares with measurements of its kind (None: no floor)."""
        return self.vcfg.verify_floor_m if meas.inliers else self.cfg.refine_floor_m if self.matcher is not None \
            else None

    def _correct(self, meas: Measurement) -> None:
        h_p = self.P[:2]
        s = h_p[:, :2] + meas.cov
        innov = meas.xy - self.x[:2]
        k = np.linalg.solve(s, h_p).T                       # (4, 2) = P H^T S^-1
        self.x = self.x + k @ innov
        self.P = self.P - k @ h_p
        self.P = 0.5 * (self.P + self.P.T)
        floor = self._floor(meas)
        if floor is not None:
            # errors the matches share from frame to frame (map georeference, relief) do not average
            # out: the position's variance stays at least the floor^2 on every axis
            lam, vec = np.linalg.eigh(self.P[:2, :2])
            lift = np.maximum(floor ** 2 - lam, 0.0)
            if lift.any():
                self.P[:2, :2] += (vec * lift) @ vec.T

    # the filter's state: everything ``update`` may change (``frames`` counts every frame, failed or not)
    _STATE = ('x', 'P', 't', 'agreeing', 'rejected', 'conflicts', 'confirmed_t', 'start_t', 'last_fix', 'last_refined',
              'odom', 'align', 'odom_last', 'odom_path', 'fixes', 'coasted', 'rejected_total', 'track_drops')

    def state(self) -> dict:
        """A deep copy of the filter's state (``restore`` puts it back)."""
        return {k: copy.deepcopy(getattr(self, k)) for k in self._STATE}

    def restore(self, state: dict) -> None:
        for k in self._STATE:
            setattr(self, k, state[k])

    def update(self, descriptor: np.ndarray, t: float, boundary: Optional[np.ndarray] = None,
               odom: Optional[OdomPose] = None, height_m: Optional[float] = None,
               image: Optional[np.ndarray] = None) -> Estimate:
        """One frame at time ``t`` (seconds of the node's clock, the frame's stamp), with its
        boundary map for the refinement (optional), the odometry pose at ``t`` (optional: the
        prediction) and the height above ground at ``t`` (optional: the refinement's heights).
        Transactional: when the frame fails (a malformed input raises ValueError, a numerical
        failure of the filter ``FilterFault``) the filter is left exactly as it was before."""
        self.frames += 1
        if not np.isfinite(descriptor).all():     # a malformed input, not a jump of the drone
            raise ValueError('descriptor has non-finite values')
        if height_m is not None and not (math.isfinite(height_m) and height_m > 0):
            raise ValueError(f'height_m={height_m!r}: must be a positive height above ground')
        if odom is not None and not isinstance(odom, OdomPose):
            raise ValueError(f'odom={odom!r}: expected an OdomPose')
        frame = self.frame_features(image)           # outside the transaction: it changes no state
        before = self.state()
        try:
            est = self._update(descriptor, t, boundary, odom, height_m, frame)
            if self.x is not None and not (np.isfinite(self.x).all() and np.isfinite(self.P).all()):
                raise FilterFault(f'non-finite filter state at t={t:.6g} (x={self.x}, P diagonal={np.diag(self.P)})')
        except (np.linalg.LinAlgError, ArithmeticError) as e:   # LinAlgError is a ValueError: still the filter's
            self.restore(before)
            raise FilterFault(f'{type(e).__name__} at t={t:.6g}: {e}') from e
        except BaseException:
            self.restore(before)
            raise
        if frame is not None:
            self._prefetch(t, height_m)
        return est

    def close(self) -> None:
        """Stop the verification's background thread (``Verifier.close``)."""
        if self.verifier is not None:
            self.verifier.close()

    def _prefetch(self, t: float, height_m: Optional[float]) -> None:
        """With a track: the map keypoints of the next frame's window (the track's position one frame
        interval ahead, at the height input's height, else the track's) detected in the background
        (``Verifier.prefetch``)."""
        dt = t - self.frame_t if self.frame_t is not None and t > self.frame_t else 0.0
        self.frame_t = t
        if self.x is None:
            return
        h = height_m if height_m is not None else self.last_refined[1] \
            if self.last_refined is not None and np.isfinite(self.last_refined[1]) else \
            float(np.mean(self.map.config.heights_m))
        self.verifier.prefetch(self.x[:2] + self.x[2:] * dt, h)

    def _update(self, descriptor: np.ndarray, t: float, boundary: Optional[np.ndarray],
                odom: Optional[OdomPose], height_m: Optional[float], frame=None) -> Estimate:
        """Every frame gets an independent measurement g (retrieval + refinement around it); a
        confirmed track also a measurement searched around its prediction (tr). See the module
        docstring, step 4, for the decisions."""
        cfg = self.cfg
        if self.t is not None and t < self.t:                 # clock jumped back (bag replayed): start over
            self.reset()
            self.odom_last = None
        if odom is not None:
            if self.odom_last is not None:
                self.odom_path += math.hypot(odom.x - self.odom_last.x, odom.y - self.odom_last.y)
            self.odom_last = odom
        if boundary is not None:
            boundary = patch_grid(boundary)                   # once, for both searches
        near = self.last_refined[1] if self.last_refined is not None and self.agreeing >= cfg.init_fixes and \
            t - self.t < self.NEAR_HEIGHT_WITHIN_S else None
        pred = self._prediction(t, odom) if self.x is not None else None   # the filter's state at t, once
        prior = self._prior(t, pred) if pred is not None else None
        tr = self.measure(descriptor, boundary, prior, height_m, frame=frame) \
            if prior is not None and (boundary is not None or frame is not None) else None
        tr_ok = tr is not None and not tr.weak and self._reachable(t, tr) and self._chi2(pred, tr) <= cfg.gate_chi2
        # while the frame verifies where the confirmed track predicts (inside its gate), the independent
        # measurement verifies the retrieval's best place only (does it agree?), not every candidate: the
        # time of one verification instead of verify_candidates (a track it would start is checked on all);
        # a best place within cluster_radius_m of the tracked registration takes it over (the same place)
        reduced = tr_ok and bool(tr.inliers) and frame is not None
        g = self.measure(descriptor, boundary, height_m=height_m, near_height=near, frame=frame,
                         candidates=1 if reduced else None, known=tr if reduced else None)
        if self.x is None:
            if g.weak:
                return Estimate(t, g, reason='ambiguous' if g.weak == 'ambiguous' else 'weak', independent=g)
            return self._begin(t, g, odom)
        if self.agreeing < cfg.init_fixes:                    # a candidate track: independent agreement only
            if g.weak:
                return self._reject(t, g, 'ambiguous' if g.weak == 'ambiguous' else 'initialising')
            if not self._reachable(t, g) or self._chi2(pred, g) > cfg.gate_chi2 or \
                    (self.agreeing >= 2 and self._motion_sigma(pred) > cfg.max_agreement_sigma_m):
                return self._begin(t, g, odom)      # disagrees, or the agreement would say nothing
            self._predict(t, odom, pred)
            self._correct(g)
            young = t - self.start_t < cfg.init_span_s          # not yet init_span_s of evidence: not the last one
            self.agreeing = min(self.agreeing + 1, cfg.init_fixes - 1 if young else cfg.init_fixes)
            self.rejected = 0
            self._remember(t, g, odom)
            if self.agreeing < cfg.init_fixes:
                return Estimate(t, g, reason='initialising', independent=g)
            self.confirmed_t, self.rejected = t, 0
            return self._fix(t, g)
        g_agrees = not g.weak and not g.shared and self._reachable(t, g) and self._chi2(pred, g) <= cfg.gate_chi2
        if g_agrees:
            use = tr if tr_ok and tr.sigma < g.sigma else g
            self.conflicts = 0
            if self._motion_sigma(pred) <= cfg.max_agreement_sigma_m or self._verified(g):
                self.confirmed_t = t
                self.agreeing += 1
        elif not g.weak and not (tr_ok and np.isfinite(tr.evidence[0]) and g.evidence[0] < tr.evidence[0] +
                                 cfg.conflict_sigmas * max(g.evidence[1], tr.evidence[1])):
            # an independent measurement elsewhere that explains the frame clearly better than the track
            self.conflicts += 1
            if self.conflicts >= cfg.drop_after:
                self.track_drops += 1
                if reduced:       # the new track's place: checked against every candidate first
                    g = self.measure(descriptor, boundary, height_m=height_m, near_height=near, frame=frame)
                    if g.weak:
                        self.reset()
                        return Estimate(t, g, reason='ambiguous' if g.weak == 'ambiguous' else 'conflict',
                                        tracked=tr, independent=g)
                est = self._begin(t, g, odom)
                est.reason = est.reason if est.fix else 'conflict'
                return est
            return self._reject(t, g, 'conflict', tr)
        elif tr_ok:
            use = tr
            if self._verified(tr):       # the frame registered where the track predicted: geometric evidence
                self.confirmed_t = t
        else:                  # g is weak and the track's own search found nothing it can take
            reason = 'gate' if tr is not None and not tr.weak else 'ambiguous' if g.weak == 'ambiguous' else 'weak'
            if pred[2] and (tr is None or tr.weak):
                # no measurement of this frame: the odometry carries the track while its evidence is recent
                # (a tracked measurement outside the gate is evidence against the prediction: no fix)
                return self._coast(t, odom, pred, g, tr)
            return self._reject(t, g, reason, tr)
        self._predict(t, odom, pred)
        self._correct(use)
        self.rejected = 0
        self._remember(t, use, odom)
        return self._fix(t, use, tr, g)

    def _coast(self, t: float, odom: OdomPose, pred, g: Measurement, tr: Optional[Measurement]) -> Estimate:
        """A frame without a measurement the track can take, the odometry aligned: the filter moves to
        the odometry's prediction and gives a fix under the same rules as any (confirmed within
        ``confirm_window_s``, sigma at most ``max_fix_sigma_m``: else their reason); the frame still
        counts as rejected (``reset_after`` of them in a row lose the track). The fix's yaw is the
        odometry's, rotated by the alignment."""
        self._predict(t, odom, pred)
        if self._count_rejection():
            return Estimate(t, g, reason='lost', tracked=tr, independent=g)
        align = self.align.alignment()
        carried = Measurement(self.x[:2].copy(), self.P[:2, :2].copy(), wrap(odom.yaw + align.theta),
                              float(align.cov[0, 0]), g.score, g.margin, g.tile)
        est = self._fix(t, carried, tr, g)
        est.coasted = est.fix
        self.coasted += est.fix
        return est

    def _count_rejection(self) -> bool:
        """A frame the track took no measurement from, counted: ``reset_after`` of them in a row lose
        the track (True)."""
        self.rejected_total += 1
        if self.x is None:
            return False
        self.rejected += 1
        if self.rejected >= self.cfg.reset_after:
            self.reset()
            return True
        return False

    def _reject(self, t: float, meas: Measurement, reason: str, tracked: Optional[Measurement] = None) -> Estimate:
        if self._count_rejection():
            reason = 'lost'
        return Estimate(t, meas, reason=reason, tracked=tracked, independent=meas)


def inside_ellipse(err: np.ndarray, cov: np.ndarray, k: float = 2.0) -> bool:
    """Whether the 2-D error lies inside the k-sigma ellipse of ``cov`` (Mahalanobis <= k)."""
    return float(err @ np.linalg.solve(cov, err)) <= k * k


def summarize(frames: int, fixes: list, truth: list, t0: float) -> dict:
    """Figures of a flight: ``fixes`` [(t, xy, cov, yaw)], ``truth`` [(t, xy, yaw)] paired by time.
    Rates over the frames after the first fix: ``fix_rate`` (any fix), ``correct_fix_rate``
    (error <= 5 m); shares of the fixes: within 5 / 10 / 20 m, inside their 2-sigma ellipse,
    and ``confident_wrong`` (error > 20 m while the 2-sigma of the worst axis is < 10 m: what a
    navigation stack would fuse with full weight)."""
    by_t = {round(t, 6): (xy, yaw) for t, xy, yaw in truth}
    err, yerr, inside, times, two_sigma = [], [], [], [], []
    for t, xy, cov, yaw in fixes:
        true = by_t.get(round(t, 6))
        if true is None:
            continue
        e = np.asarray(xy) - true[0]
        err.append(float(np.hypot(*e)))
        yerr.append(abs(math.degrees((yaw - true[1] + math.pi) % (2 * math.pi) - math.pi)))
        inside.append(inside_ellipse(e, np.asarray(cov)))
        two_sigma.append(2 * largest_sigma(np.asarray(cov)))
        times.append(t)
    after = [t for t, _, _ in truth if times and t >= times[0]]
    n_after = max(len(after), 1)
    e = np.array(err) if err else np.array([np.nan])
    n = max(len(err), 1)
    wrong = sum(1 for x, s in zip(err, two_sigma) if x > 20.0 and s < 10.0)
    return {'frames': frames, 'fixes': len(err),
            'fix_rate': len(err) / n_after if err else 0.0,
            'correct_fix_rate': float(np.sum(e <= 5.0)) / n_after if err else 0.0,
            'within_5m': float(np.sum(e <= 5.0)) / n if err else float('nan'),
            'within_10m': float(np.sum(e <= 10.0)) / n if err else float('nan'),
            'within_20m': float(np.sum(e <= 20.0)) / n if err else float('nan'),
            'confident_wrong': wrong, 'confident_wrong_share': wrong / n if err else float('nan'),
            'error_p50_m': float(np.nanpercentile(e, 50)), 'error_p95_m': float(np.nanpercentile(e, 95)),
            'error_max_m': float(np.nanmax(e)),
            'two_sigma_p50_m': float(np.median(two_sigma)) if two_sigma else float('nan'),
            'yaw_error_p50_deg': float(np.median(yerr)) if yerr else float('nan'),
            'inside_2sigma': float(np.mean(inside)) if inside else float('nan'),
            'time_to_first_fix_s': (times[0] - t0) if times else None}
