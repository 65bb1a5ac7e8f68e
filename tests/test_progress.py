"""Progress lines with time left, and the calibration time budget (pure logic, a fake clock)."""
from gplq_ros.offline.progress import Budget, ProgressLog, duration


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_lines_have_the_time_left_and_are_throttled():
    clock, lines = Clock(), []
    log = ProgressLog('cal', every=10, emit=lines.append, clock=clock, units={'weights': 'layers'})
    log('stage 1', 1, 5, {'loss': 0.5})
    assert lines == ['cal: stage 1: 1/5 steps, 0 s (loss 0.5)']          # the pace is not known yet
    clock.t = 4
    log('stage 1', 2, 5)
    assert len(lines) == 1                                             # within 10 s of the last line
    clock.t = 12
    log('stage 1', 3, 5)
    assert lines[-1] == 'cal: stage 1: 3/5 steps, 12 s, ~12 s left'      # 6 s a step from the first call on
    clock.t = 13
    log('stage 1', 5, 5)
    assert lines[-1] == 'cal: stage 1: 5/5 steps, 13 s, done'             # the end always shows
    log('stage 1', 5, 5)
    assert len(lines) == 3                                             # once
    log('weights', 1, 48)
    assert lines[-1] == 'cal: weights: 1/48 layers, 0 s'
    clock.t = 200
    log('stage 1', 1, 3)                                                # the stage again (another run)
    assert lines[-1].startswith('cal: stage 1: 1/3 steps, 0 s')
    assert duration(75) == '1 min 15 s' and duration(7300) == '2 h 01 min'


def test_the_budget_cuts_stages_to_what_fits():
    clock = Clock()
    none = Budget(None, clock=clock)
    assert none.fit(400, 3.0) == 400 and none.left() == float('inf')
    b = Budget(300, clock=clock)
    clock.t = 10
    assert b.fit(64, 2.0, share=0.5) == 64              # 64 steps of 2 s fit in half of 300 s (140 s left of it)
    assert b.fit(100, 2.0, share=0.5) == 70             # 100 do not: (150 - 10) / 2
    clock.t = 200
    assert b.fit(12 * 400, 0.5, reserve_s=45) == 110    # (300 - 200 - 45) / 0.5
    clock.t = 290
    assert b.fit(12 * 400, 0.5, reserve_s=45, minimum=12) == 12    # over budget: the minimum only
    assert b.left() == 10


def test_the_default_calibration_has_a_budget_its_stages_respect():
    from gplq_ros.offline.api import ONBOARD_CALIBRATION, RESERVE_S
    assert ONBOARD_CALIBRATION.budget_s is not None and ONBOARD_CALIBRATION.budget_s <= 300
    assert RESERVE_S < ONBOARD_CALIBRATION.budget_s / 2


def test_a_note_is_always_written():
    clock, lines = Clock(), []
    log = ProgressLog('cal', every=10, emit=lines.append, clock=clock)
    log('stage 1', 1, 64)
    clock.t = 2
    log('stage 1', 2, 64)
    assert len(lines) == 1
    log('stage 1', 2, 40, {'note': 'budget_s=300: 40 of 64 steps fit'})
    assert lines[-1] == 'cal: stage 1: 2/40 steps, 2 s, ~1 min 16 s left (note budget_s=300: 40 of 64 steps fit)'
