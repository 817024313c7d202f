"""The RADIUS client's pieces that need no server."""

import asyncio

from bng_operator.agent.radius.client import _Slots
from bng_operator.agent.radius.wire import RANDOM_POOL, RandomBytes


def test_request_authenticators_are_16_bytes_and_never_repeat_across_refills() -> None:
    a = RandomBytes()
    drawn = [a.take(16) for _ in range(3 * RANDOM_POOL // 16 + 5)]
    assert {len(x) for x in drawn} == {16}
    assert len(set(drawn)) == len(drawn)


def test_request_slots_are_held_by_at_most_n_and_handed_on_in_order() -> None:
    async def run() -> tuple[list[str], int]:
        slots = _Slots(2)
        order: list[str] = []
        peak = holding = 0
        gates = {n: asyncio.Event() for n in "abcde"}

        async def user(name: str) -> None:
            nonlocal peak, holding
            async with slots:
                holding += 1
                peak = max(peak, holding)
                order.append(name)
                await gates[name].wait()
                holding -= 1

        tasks = {n: asyncio.create_task(user(n)) for n in "abcde"}
        await asyncio.sleep(0)
        assert order == ["a", "b"]
        tasks["c"].cancel()  # a waiter that gives up is passed over, and holds nothing
        await asyncio.sleep(0)
        gates["b"].set()
        await asyncio.sleep(0.01)
        assert order == ["a", "b", "d"]
        for g in gates.values():
            g.set()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        async with slots, slots:  # every slot came back: two can be held again at once
            pass
        return order, peak

    order, peak = asyncio.run(run())
    assert order == ["a", "b", "d", "e"] and peak == 2


def test_a_waiter_cancelled_as_it_is_handed_a_slot_passes_it_on() -> None:
    async def run() -> list[str]:
        slots = _Slots(1)
        got: list[str] = []

        async def user(name: str) -> None:
            async with slots:
                got.append(name)

        await slots.__aenter__()
        b, c = asyncio.create_task(user("b")), asyncio.create_task(user("c"))
        await asyncio.sleep(0)
        await slots.__aexit__()  # the slot goes to b ...
        b.cancel()  # ... which is cancelled before it runs: c must get it
        await asyncio.gather(b, c, return_exceptions=True)
        return got

    assert asyncio.run(run()) == ["c"]
