"""The step-time floor that tests of time limits and kills rely on (spadec.pacing)."""

from __future__ import annotations

import pytest

from spadec import pacing


class FakeClock:
    """time.monotonic and time.sleep over a clock the test advances."""

    def __init__(self):
        self.now, self.slept = 100.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 9))
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(pacing.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(pacing.time, "sleep", fake.sleep)
    return fake


def test_each_step_is_topped_up_to_the_floor(clock, monkeypatch):
    monkeypatch.setenv(pacing.ENV_VAR, "0.5")
    seen = []
    for step, cost in zip(pacing.paced(range(3)), (0.1, 0.7, 0.5), strict=True):
        seen.append(step)
        clock.now += cost  # the step's own work
    assert seen == [0, 1, 2]
    # 0.1 s of work sleeps 0.4 s; a step already as long as the floor sleeps nothing
    assert clock.slept == [0.4]
    assert clock.now == pytest.approx(100.0 + 0.5 + 0.7 + 0.5)


def test_unset_or_zero_leaves_the_steps_alone(clock, monkeypatch):
    monkeypatch.delenv(pacing.ENV_VAR, raising=False)
    assert list(pacing.paced(range(4))) == [0, 1, 2, 3]
    monkeypatch.setenv(pacing.ENV_VAR, "0")
    assert list(pacing.paced(iter("ab"))) == ["a", "b"]
    assert clock.slept == []


@pytest.mark.parametrize("value", ["fast", "-1", "nan"])
def test_a_bad_value_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(pacing.ENV_VAR, value)
    with pytest.raises(ValueError, match=f"{pacing.ENV_VAR}='{value}'"):
        list(pacing.paced(range(2)))
