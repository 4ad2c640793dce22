"""Which queued request the offload server's workers take next: round-robin by device, each device held to its
share of the workers' time while other devices are active.

Round-robin alone decides only among requests that are queued: a device that always has one waiting (one device
on many connections) is served whenever the others' next requests have not arrived yet, and takes far more than
its share. So each device also has a budget of worker time, a token bucket: while ``n`` devices are active (sent
a request within the last ``window_s``) a device earns ``share / n`` of the workers' time per second, at most
``window_s`` seconds' worth, and each answer costs the worker time it took. A device whose budget is spent waits,
queued, until it has earned more, even when the workers have nothing else to do; waiting costs the server
nothing, as a session sends its next request only after its answer. A device alone (``n == 1``) is never held:
it gets the whole server. ``share`` above 1 leaves room for uneven arrivals: devices that each take their equal
share never wait for budget.
"""

import asyncio
import collections
import time


class FairQueue:
    """Jobs by device id. ``workers``: how many jobs run at once (the worker time earned per second). ``share`` or
    ``window_s`` 0 turns the budgets off (round-robin only). ``clock`` returns seconds (tests pass their own)."""

    def __init__(self, workers=1, share=2.0, window_s=1.0, clock=time.monotonic):
        self._by_device = collections.OrderedDict()     # device id -> deque of its jobs, next turn first
        self._size = 0
        self._workers = workers
        self._share = share
        self._window_s = window_s if share > 0 else 0.0
        self._clock = clock
        self._active = collections.OrderedDict()        # device id -> time it last queued or finished a job
        self._budget = {}                               # device id -> [worker seconds it may still use, as of]
        self._changed = asyncio.Event()

    def qsize(self):
        return self._size

    def active_devices(self):
        """Devices that queued or finished a job within the last window_s."""
        self._forget_inactive(self._clock())
        return len(self._active)

    def put_nowait(self, device_id, job):
        self._by_device.setdefault(device_id, collections.deque()).append(job)
        self._size += 1
        self._seen(device_id, self._clock())
        self._changed.set()

    def take(self):
        """(the next job, None) or, when every queued device has spent its budget, (None, seconds until the
        first of them may go on); (None, None) when nothing is queued."""
        now = self._clock()
        self._forget_inactive(now)
        wait_s = None
        for device_id, jobs in self._by_device.items():
            self._seen(device_id, now)          # waiting for budget is being active
            behind_s = self._overspent_s(device_id, now)
            if behind_s > 0:
                wait_s = behind_s if wait_s is None else min(wait_s, behind_s)
                continue
            job = jobs.popleft()
            if jobs:
                self._by_device.move_to_end(device_id)
            else:
                del self._by_device[device_id]
            self._size -= 1
            return job, None
        return None, wait_s

    async def get(self):
        while True:
            job, wait_s = self.take()
            if job is not None:
                return job
            self._changed.clear()
            if wait_s is None:
                await self._changed.wait()
            else:
                try:
                    await asyncio.wait_for(self._changed.wait(), wait_s)
                except asyncio.TimeoutError:
                    pass

    def served(self, device_id, worker_s):
        """Charge a device for a job that took ``worker_s`` seconds of a worker."""
        now = self._clock()
        self._seen(device_id, now)
        if self._window_s > 0:
            budget = self._budget_at(device_id, now)
            budget[0] -= worker_s
        self._changed.set()

    # -- budgets -------------------------------------------------------------------------------------------
    def _seen(self, device_id, now):
        self._active[device_id] = now
        self._active.move_to_end(device_id)

    def _forget_inactive(self, now):
        while self._active:
            device_id, last = next(iter(self._active.items()))
            if now - last <= self._window_s:
                break
            del self._active[device_id]
            self._budget.pop(device_id, None)

    def _rate(self):
        """Worker seconds a device earns per second while len(self._active) devices are active."""
        return self._share * self._workers / max(1, len(self._active))

    def _budget_at(self, device_id, now):
        rate = self._rate()
        most = rate * self._window_s
        budget = self._budget.get(device_id)
        if budget is None:
            budget = self._budget[device_id] = [most, now]
        else:
            budget[0] = min(most, budget[0] + (now - budget[1]) * rate)
            budget[1] = now
        return budget

    def _overspent_s(self, device_id, now):
        """0 when the device may have a worker now, else the seconds until it has earned back what it overspent."""
        if self._window_s <= 0 or len(self._active) <= 1:
            return 0.0
        spent = -self._budget_at(device_id, now)[0]
        return spent / self._rate() if spent > 1e-9 else 0.0       # a nanosecond: rounding
