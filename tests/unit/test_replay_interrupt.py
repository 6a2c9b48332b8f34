"""A SIGTERM during an async replay ends it at an await, never inside a transport's callback
(smoke.replay.interruptible): a real signal sent to this process, on the loop the replay uses."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from smoke import replay


def _raise(signum, frame):
    raise AssertionError("the CLI's own handler ran inside the loop")


def test_sigterm_cancels_the_replay_then_raises_keyboardinterrupt_and_restores_the_handler():
    cleaned: list[str] = []

    async def work():
        try:
            asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
            await asyncio.sleep(10)
        finally:
            cleaned.append("finally ran")      # the replay's cleanup (connections, files) runs

    prev = signal.signal(signal.SIGTERM, _raise)
    try:
        with asyncio.Runner(loop_factory=replay.loop_factory()) as runner, pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            runner.run(replay.interruptible(work()))
        assert cleaned == ["finally ran"]
        assert signal.getsignal(signal.SIGTERM) is _raise                     # the CLI's handler is back
    finally:
        signal.signal(signal.SIGTERM, prev)


def test_a_cancel_that_is_no_signal_stays_a_cancel_and_results_pass_through():
    async def answer():
        return 42

    assert asyncio.run(replay.interruptible(answer())) == 42

    async def cancelled():
        t = asyncio.ensure_future(replay.interruptible(asyncio.sleep(10)))
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(cancelled())
