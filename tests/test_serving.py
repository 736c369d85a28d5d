"""``serving``: a shutdown that waits on something forever gives up, saying what waits."""

from __future__ import annotations

import asyncio
import logging

from smartproxy.serving import cleanup_or_give_up


class StuckRunner:
    """A runner whose cleanup awaits a future nobody answers (a bug somewhere below it)."""

    def __init__(self) -> None:
        self.never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def cleanup(self) -> None:
        await self.wait_for_settlement()

    async def wait_for_settlement(self) -> None:
        await self.never


class FineRunner:
    cleaned = False

    async def cleanup(self) -> None:
        await asyncio.sleep(0)
        self.cleaned = True


async def test_a_stuck_shutdown_gives_up_and_names_where_it_waits(caplog):
    caplog.set_level(logging.ERROR, "smartproxy")
    runner = StuckRunner()
    await asyncio.wait_for(cleanup_or_give_up(runner, 0.2, hard_exit=False), 5)  # type: ignore[arg-type]
    assert "shutdown still waiting 0.2s after the signal" in caplog.text
    assert "wait_for_settlement" in caplog.text  # where: the innermost coroutine frame


async def test_a_shutdown_that_finishes_says_nothing(caplog):
    runner = FineRunner()
    await cleanup_or_give_up(runner, 5, hard_exit=False)  # type: ignore[arg-type]
    assert runner.cleaned and "shutdown still waiting" not in caplog.text
