"""Per-phase timing: what each phase took, a phase measured on the instance split out of it,
and the one-line summary the log ends with."""

from __future__ import annotations

import pytest

from ec2_executor import phases as phases_module
from ec2_executor.phases import Phases


class Clock:
    """`time.perf_counter` that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(phases_module, "time", fake)
    return fake


def test_a_phase_takes_its_time_and_repeats_add_up(clock: Clock) -> None:
    phases = Phases("s")
    with phases.phase("plan"):
        clock.now += 1.5
    with phases.phase("create stack"):
        clock.now += 2.0
    with phases.phase("plan"):
        clock.now += 0.25
    assert phases.seconds == {"plan": 1.75, "create stack": 2.0}


def test_a_failing_phase_is_timed_too(clock: Clock) -> None:
    phases = Phases("s")
    with pytest.raises(RuntimeError), phases.phase("wait for SSH"):
        clock.now += 3.0
        raise RuntimeError("no answer")
    assert phases.seconds == {"wait for SSH": 3.0}


def _three(clock: Clock) -> Phases:
    phases = Phases("s")
    for name, took in (("wait for SSH", 1.0), ("upload, run, fetch", 10.0), ("delete", 2.0)):
        with phases.phase(name):
            clock.now += took
    return phases


def test_split_moves_time_to_a_part_that_comes_first(clock: Clock) -> None:
    phases = _three(clock)
    phases.split("upload, run, fetch", "bootstrap", 4.0)
    assert list(phases.seconds.items()) == [
        ("wait for SSH", 1.0),
        ("bootstrap", 4.0),
        ("upload, run, fetch", 6.0),
        ("delete", 2.0),
    ]


def test_split_takes_no_more_than_the_phase_had(clock: Clock) -> None:
    phases = _three(clock)
    phases.split("upload, run, fetch", "bootstrap", 99.0)
    assert phases.seconds["bootstrap"] == 10.0 and phases.seconds["upload, run, fetch"] == 0.0


def test_split_adds_to_a_part_already_there(clock: Clock) -> None:
    phases = _three(clock)
    phases.split("upload, run, fetch", "wait for SSH", 2.0)
    assert list(phases.seconds.items()) == [
        ("wait for SSH", 3.0),
        ("upload, run, fetch", 8.0),
        ("delete", 2.0),
    ]


def test_summary_lists_the_phases_in_order(clock: Clock) -> None:
    phases = _three(clock)
    phases.split("upload, run, fetch", "bootstrap", 4.0)
    assert phases.summary() == (
        "wait for SSH 1.00s, bootstrap 4.00s, upload, run, fetch 6.00s, delete 2.00s"
    )
    assert Phases("s").summary() == ""
