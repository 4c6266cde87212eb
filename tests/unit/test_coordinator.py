"""The coordinator's round logic as plain asyncio (no Ray): membership, deadlines, late groups."""

from __future__ import annotations

import asyncio

from streamloco.launcher.ray_transport import Coordinator


def _run(coro):
    return asyncio.run(coro)


async def _submit(c: Coordinator, group: int, key=(0, 10), rank: int = 0):
    return await c.submit(group, rank, key, [f"ref{group}"], 100 + group, 0.0)


async def _take(c: Coordinator, group: int, key=(0, 10), lacking=(), timeout=1.0):
    """What a group does with a round: collect it, fetch, confirm what it could not fetch."""
    status, value = await c.collect(group, 0, key, timeout)
    assert status == "ok", (status, value)
    status, left_out = await c.confirm(group, 0, key, list(lacking), timeout)
    assert status == "ok", (status, left_out)
    return value, left_out


def test_a_round_closes_when_every_member_has_submitted_and_is_forgotten_after_collects():
    async def go():
        c = Coordinator(3)
        for g in range(3):
            assert await _submit(c, g) is None
        results = await asyncio.gather(*(_take(c, g) for g in range(3)))
        assert all(sorted(v) == [0, 1, 2] and left_out == [] for v, left_out in results)
        assert await c.rounds_open() == 0

    _run(go())


def test_without_a_deadline_a_missing_group_is_named_on_timeout():
    async def go():
        c = Coordinator(3)
        await _submit(c, 0)
        await _submit(c, 2)
        assert await c.collect(0, 0, (0, 10), 0.1) == ("missing", [1])

    _run(go())


def test_a_straggler_misses_the_deadline_and_still_gets_the_round_without_its_payload():
    async def go():
        c = Coordinator(3, deadline_s=0.1, min_groups=2)
        await _submit(c, 0)
        await _submit(c, 1)
        fast = await asyncio.gather(_take(c, 0), _take(c, 1))
        assert all(v == {0: (["ref0"], 100, 0.0), 1: (["ref1"], 101, 0.0)} for v, _ in fast)
        assert await c.rounds_open() == 1  # kept for the straggler
        assert await _submit(c, 2) == "late"
        value, _ = await _take(c, 2)
        assert sorted(value) == [0, 1]
        assert await c.rounds_open() == 0
        assert (await c.status())["late"] == {2: 1}

    _run(go())


def test_the_deadline_waits_for_min_groups():
    async def go():
        c = Coordinator(3, deadline_s=0.05, min_groups=2)
        await _submit(c, 0)
        await asyncio.sleep(0.15)  # past the deadline, but only one group is in
        assert await c.collect(0, 0, (0, 10), 0.05) == ("missing", [1, 2])
        await _submit(c, 1)  # now two: closes at once
        status, value = await c.collect(0, 0, (0, 10), 1.0)
        assert status == "ok" and sorted(value) == [0, 1]

    _run(go())


def test_leave_and_join():
    async def go():
        c = Coordinator(3)
        await _submit(c, 0)
        await _submit(c, 1)
        pending = asyncio.ensure_future(c.collect(0, 0, (0, 10), 2.0))
        await asyncio.sleep(0.01)
        assert not pending.done()
        await c.leave(2)  # group 2 died: the open round closes with the others
        assert sorted((await pending)[1]) == [0, 1]
        confirmed, (value, _) = await asyncio.gather(c.confirm(0, 0, (0, 10), [], 1.0), _take(c, 1))
        assert confirmed == ("ok", []) and sorted(value) == [0, 1]
        assert await c.rounds_open() == 0
        await c.join(2, 20)  # its replacement takes part in rounds sent after step 20
        for g in (0, 1):
            await _submit(c, g, key=(1, 15))
        assert sorted((await c.collect(0, 0, (1, 15), 1.0))[1]) == [0, 1]
        for g in (0, 1):
            await _submit(c, g, key=(0, 30))
        assert await c.collect(0, 0, (0, 30), 0.05) == ("missing", [2])
        await _submit(c, 2, key=(0, 30))
        assert sorted((await c.collect(0, 0, (0, 30), 1.0))[1]) == [0, 1, 2]

    _run(go())


def test_ranks_run_separate_rounds():
    async def go():
        c = Coordinator(2)
        await _submit(c, 0, rank=0)
        await _submit(c, 1, rank=1)
        assert await c.collect(0, 0, (0, 10), 0.05) == ("missing", [1])
        await _submit(c, 1, rank=0)
        assert (await c.collect(0, 0, (0, 10), 1.0))[0] == "ok"

    _run(go())


def test_a_payload_some_group_could_not_fetch_is_left_out_by_all():
    async def go():
        c = Coordinator(3)
        for g in range(3):
            await _submit(c, g)
        # group 2 died after submitting; group 0 fetched its payload, group 1 could not
        await c.leave(2)
        results = await asyncio.gather(_take(c, 0), _take(c, 1, lacking=[2]))
        assert [left_out for _, left_out in results] == [[2], [2]]
        assert await c.rounds_open() == 0

    _run(go())


def test_agreement_waits_for_every_live_participant():
    async def go():
        c = Coordinator(2)
        for g in range(2):
            await _submit(c, g)
        await c.collect(0, 0, (0, 10), 1.0)
        assert await c.confirm(0, 0, (0, 10), [], 0.05) == ("missing", [1])
        await c.collect(1, 0, (0, 10), 1.0)
        assert (await c.confirm(1, 0, (0, 10), [], 1.0)) == ("ok", [])

    _run(go())
