"""Polars work in the data service runs at most max_parallel_scans at once: each may peak
near the dataset caps' memory, so N parallel queries would need N times it."""

import asyncio
import threading

from datalab.data.scans import ScanSlots


def test_scans_beyond_the_slots_wait_their_turn():
    first_running, release, second_ran = threading.Event(), threading.Event(), threading.Event()

    def first():
        first_running.set()
        release.wait(30)

    async def main():
        slots = ScanSlots(1)
        one = asyncio.create_task(slots.run(first))
        await asyncio.to_thread(first_running.wait, 30)
        two = asyncio.create_task(slots.run(second_ran.set))
        # While the only slot is taken, the second never starts (given ample time to).
        started_early = await asyncio.to_thread(second_ran.wait, 1.0)
        release.set()
        await asyncio.gather(one, two)
        return started_early

    assert asyncio.run(main()) is False
    assert second_ran.is_set()
