"""``timeout(delay)``: asyncio.timeout on Python >= 3.11, the same on 3.10 (which tinyhost supports and lacks it).

Used as ``async with timeout(s):``; the block is cancelled after ``s`` seconds and TimeoutError (the builtin, as
3.11's) raised in its place. A cancellation from elsewhere passes through unchanged. Unlike asyncio.wait_for it
makes no task.
"""

import asyncio
import contextlib


@contextlib.asynccontextmanager
async def timeout_310(delay):
    task = asyncio.current_task()
    expired = []

    def expire():
        expired.append(True)
        task.cancel()

    handle = None if delay is None else asyncio.get_running_loop().call_later(max(delay, 0.0), expire)
    try:
        yield
    except asyncio.CancelledError:
        if expired:
            raise TimeoutError from None
        raise
    finally:
        if handle is not None:
            handle.cancel()


timeout = getattr(asyncio, "timeout", timeout_310)
