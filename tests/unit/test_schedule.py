"""The sync schedule against written tables (F=4, H=100, tau in {0, 1, 5}), both offset rules."""

import pytest

from streamloco.outer_optim.schedule import Schedule

# step -> (fragments sending, fragments applying), for steps 1..230; steps not listed: nothing.
STREAMING = {
    0: {
        25: ([1], [1]),
        50: ([2], [2]),
        75: ([3], [3]),
        100: ([0], [0]),
        125: ([1], [1]),
        150: ([2], [2]),
        175: ([3], [3]),
        200: ([0], [0]),
        225: ([1], [1]),
    },
    1: {
        25: ([1], []),
        26: ([], [1]),
        50: ([2], []),
        51: ([], [2]),
        75: ([3], []),
        76: ([], [3]),
        100: ([0], []),
        101: ([], [0]),
        125: ([1], []),
        126: ([], [1]),
        150: ([2], []),
        151: ([], [2]),
        175: ([3], []),
        176: ([], [3]),
        200: ([0], []),
        201: ([], [0]),
        225: ([1], []),
        226: ([], [1]),
    },
    5: {
        25: ([1], []),
        30: ([], [1]),
        50: ([2], []),
        55: ([], [2]),
        75: ([3], []),
        80: ([], [3]),
        100: ([0], []),
        105: ([], [0]),
        125: ([1], []),
        130: ([], [1]),
        150: ([2], []),
        155: ([], [2]),
        175: ([3], []),
        180: ([], [3]),
        200: ([0], []),
        205: ([], [0]),
        225: ([1], []),
        230: ([], [1]),
    },
}
# torchft: sync k handles fragment k mod F, sends at (k+1)*H/F - tau, applies at (k+1)*H/F.
TORCHFT = {
    0: {
        25: ([0], [0]),
        50: ([1], [1]),
        75: ([2], [2]),
        100: ([3], [3]),
        125: ([0], [0]),
        150: ([1], [1]),
        175: ([2], [2]),
        200: ([3], [3]),
        225: ([0], [0]),
    },
    1: {
        24: ([0], []),
        25: ([], [0]),
        49: ([1], []),
        50: ([], [1]),
        74: ([2], []),
        75: ([], [2]),
        99: ([3], []),
        100: ([], [3]),
        124: ([0], []),
        125: ([], [0]),
        149: ([1], []),
        150: ([], [1]),
        174: ([2], []),
        175: ([], [2]),
        199: ([3], []),
        200: ([], [3]),
        224: ([0], []),
        225: ([], [0]),
    },
    5: {
        20: ([0], []),
        25: ([], [0]),
        45: ([1], []),
        50: ([], [1]),
        70: ([2], []),
        75: ([], [2]),
        95: ([3], []),
        100: ([], [3]),
        120: ([0], []),
        125: ([], [0]),
        145: ([1], []),
        150: ([], [1]),
        170: ([2], []),
        175: ([], [2]),
        195: ([3], []),
        200: ([], [3]),
        220: ([0], []),
        225: ([], [0]),
    },
}


@pytest.mark.parametrize("kind,table", [("streaming", STREAMING), ("torchft", TORCHFT)])
@pytest.mark.parametrize("tau", [0, 1, 5])
def test_schedule_matches_written_table(kind, table, tau):
    sched = Schedule(sync_every=100, fragments=4, overlap=tau, kind=kind)
    for step in range(0, 231):
        expected = table[tau].get(step, ([], []))
        assert (sched.sends(step), sched.applies(step)) == expected, f"step {step}"


def test_diloco_is_one_fragment_every_h_steps():
    sched = Schedule(sync_every=30, fragments=1, overlap=0)
    events = [s for s in range(1, 100) if sched.sends(s)]
    assert events == [30, 60, 90]
    assert all(sched.applies(s) == sched.sends(s) for s in range(100))
    assert Schedule(30, 1, 0, "torchft").sends(30) == [0]


@pytest.mark.parametrize("kind", ["streaming", "torchft"])
@pytest.mark.parametrize("h,f,tau", [(100, 4, 5), (12, 3, 3), (30, 3, 0), (6, 6, 0)])
def test_every_fragment_syncs_once_per_h_and_applies_after_its_send(kind, h, f, tau):
    sched = Schedule(h, f, tau, kind)
    in_flight: set[int] = set()
    sends = {p: 0 for p in range(f)}
    for step in range(1, 5 * h + 1):
        for p in sched.sends(step):
            assert p not in in_flight
            in_flight.add(p)
            sends[p] += 1
        for p in sched.applies(step):
            assert p in in_flight
            in_flight.remove(p)
        assert len(in_flight) <= 1  # tau < H/F: never two fragments in flight
    assert set(sends.values()) == {5}


def test_next_event():
    sched = Schedule(100, 4, 1)
    assert sched.next_event(0) == (25, 1)
    assert sched.next_event(25) == (50, 2)
    assert sched.next_event(99) == (100, 0)
    assert Schedule(100, 4, 1, "torchft").next_event(0) == (24, 0)


@pytest.mark.parametrize(
    "h,f,tau,msg",
    [
        (100, 3, 0, "multiple"),
        (100, 4, 25, "overlap"),
        (100, 4, -1, "overlap"),
        (0, 1, 0, "H=0"),
    ],
)
def test_bad_schedules_raise(h, f, tau, msg):
    with pytest.raises(ValueError, match=msg):
        Schedule(h, f, tau)


@pytest.mark.parametrize("kind", ["streaming", "torchft"])
@pytest.mark.parametrize(("h", "f", "tau"), [(12, 3, 0), (12, 3, 1), (20, 4, 4), (30, 1, 0)])
def test_idle_after_is_true_exactly_when_no_fragment_is_in_flight(kind, h, f, tau):
    sched = Schedule(h, f, tau, kind)
    in_flight: set[int] = set()
    for step in range(1, 3 * h + 1):
        in_flight |= set(sched.sends(step))
        in_flight -= set(sched.applies(step))
        assert sched.idle_after(step) == (not in_flight), (step, in_flight)
