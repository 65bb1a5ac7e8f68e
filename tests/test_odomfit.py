"""The odometry frame placed on the map along the trajectory (``onboard.odomfit``): consistent
covariance on synthetic flights with known noise, wrong measurements outvoted, no alignment without
a majority or a baseline."""
import math

import numpy as np
import pytest

from gplq_ros.onboard.flight import odometry_along
from gplq_ros.onboard.odomfit import OdometryAlignment, rotation

# 2-D Gaussian: P(Mahalanobis^2 <= 4) = 1 - exp(-2); median Mahalanobis^2 = 2 ln 2
INSIDE_2SIGMA = 1 - math.exp(-2)
MEDIAN_D2 = 2 * math.log(2)


def flight(seed, frac, drift, n=60, step=10.0, every=3, wrong=0.0):
    """A synthetic flight: n frames ``step`` m apart along a random smooth path, the odometry in a frame
    rotated and shifted at random with an error of ``frac`` per metre, either a constant bias (a heading
    or scale error: a displacement's error grows linearly with its length) or a random walk (independent
    per frame); a measurement on every ``every``-th frame with a random anisotropic covariance (sigma 1-4
    m), a share ``wrong`` of them 30-80 m off. Yields (frame, truth, odometry, path length, measurement)."""
    rng = np.random.default_rng(seed)
    heading = np.cumsum(rng.normal(0, 0.15, n)) + rng.uniform(0, 2 * math.pi)
    truth = np.vstack([np.zeros(2), np.cumsum(step * np.column_stack([np.cos(heading[:-1]),
                                                                      np.sin(heading[:-1])]), 0)])
    s = np.arange(n) * step
    theta = rng.uniform(-math.pi, math.pi)
    if drift == 'bias':
        odom = (truth - truth[0]) @ rotation(-theta).T + np.outer(s, rng.normal(0, frac, 2))
    else:                              # the benchmarks' simulated VIO
        odom = np.array([[p.x, p.y] for p in odometry_along(truth, heading, frac, math.degrees(theta), seed)])
    odom = odom + rng.uniform(-100, 100, 2)
    for i in range(n):
        meas = None
        if i % every == 0:
            a = rng.uniform(0, math.pi)
            cov = rotation(a) @ np.diag(rng.uniform(1, 4, 2) ** 2) @ rotation(a).T
            z = truth[i] + rng.multivariate_normal([0, 0], cov)
            if rng.random() < wrong:
                z = z + rng.uniform(30, 80) * np.array([math.cos(a), math.sin(a)])
            meas = (z, cov)
        yield i, truth[i], odom[i], s[i], meas


@pytest.mark.slow
@pytest.mark.parametrize('drift,wrong', [('bias', 0.15), ('walk', 0.0)])
def test_predictions_between_measurements_are_consistent(drift, wrong):
    """200 synthetic flights (45 frames, odometry error 5 % per metre, measurements on every 3rd frame, with
    or without 15 % wrong ones): one prediction per flight, at a random frame between measurements once the alignment
    holds (independent samples). The share of errors inside the predicted 2-sigma ellipse is not below
    1 - exp(-2) = 86.5 % by more than 3 binomial standard deviations, and the covariance is not uselessly
    vague: the median squared Mahalanobis distance is at least a quarter of the chi-square(2) median (sigma at
    most twice what the errors need)."""
    d2 = []
    for seed in range(200):
        align = OdometryAlignment(drift_frac=0.05)
        out = []
        for i, truth, odom, s, meas in flight(seed, 0.05, drift, n=45, wrong=wrong):
            a = align.alignment()
            if a is not None and meas is None:
                xy, cov = a.predict(odom, s)
                e = xy - truth
                out.append(float(e @ np.linalg.solve(cov, e)))
            if meas is not None:
                align.add(odom, s, *meas)
        assert out, seed
        d2.append(out[np.random.default_rng(1000 + seed).integers(len(out))])
    d2 = np.array(d2)
    inside = float(np.mean(d2 <= 4.0))
    band = 3 * math.sqrt(INSIDE_2SIGMA * (1 - INSIDE_2SIGMA) / len(d2))
    print(f'{drift}, wrong {wrong}: inside 2-sigma {inside:.3f} (n {len(d2)}), median d2 {np.median(d2):.2f}')
    assert inside >= INSIDE_2SIGMA - band, (inside, INSIDE_2SIGMA - band)
    assert float(np.median(d2)) >= MEDIAN_D2 / 4, np.median(d2)


def test_a_wrong_measurement_is_outvoted_and_a_minority_of_good_ones_gives_nothing():
    """Five anchors along a straight flight, one 60 m off: the alignment leaves it out and predicts within
    3 sigma of the truth; with two wrong of four, or before the anchors span ``min_span_m``, there is none."""
    theta, shift = math.radians(40.0), np.array([300.0, -120.0])
    cov = np.diag([4.0, 4.0])
    align = OdometryAlignment(drift_frac=0.02, min_span_m=20.0)
    odoms = [np.array([10.0 * k, 3.0 * k]) for k in range(5)]
    for k, o in enumerate(odoms):
        xy = rotation(theta) @ o + shift + (np.array([0.0, 60.0]) if k == 2 else 0.0)
        align.add(o, 10.4 * k, xy, cov)
        if k == 1:
            assert align.alignment() is None                       # two anchors, 10 m: no baseline yet
    a = align.alignment()
    assert a is not None and a.inliers == 4 and a.outliers == 1, a
    assert abs(math.degrees(a.theta - theta)) < 3.0
    o = np.array([50.0, 15.0])
    xy, c = a.predict(o, 52.0)
    e = xy - (rotation(theta) @ o + shift)
    assert float(e @ np.linalg.solve(c, e)) <= 9.0, (e, c)

    split = OdometryAlignment(drift_frac=0.02)
    for k, o in enumerate(odoms[:4]):
        off = np.array([0.0, 60.0]) if k % 2 else 0.0
        split.add(o, 10.4 * k, rotation(theta) @ o + shift + off, cov)
    assert split.alignment() is None


def test_bad_anchors_and_settings_are_refused():
    align = OdometryAlignment(drift_frac=0.05)
    with pytest.raises(ValueError, match='not finite'):
        align.add([0.0, float('nan')], 0.0, [1.0, 2.0], np.eye(2))
    with pytest.raises(ValueError, match='drift_frac=-0.1'):
        OdometryAlignment(drift_frac=-0.1)
    with pytest.raises(ValueError, match='window=1'):
        OdometryAlignment(drift_frac=0.05, window=1)
    with pytest.raises(ValueError, match='spacing_m=nan'):
        OdometryAlignment(drift_frac=0.05, spacing_m=float('nan'))
