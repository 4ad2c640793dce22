"""What ``tinyhost serve`` reports about the clients it refuses: counters for the shutdown line, and warnings
limited in rate, so that a flood of refusals costs the server a counter each, not a log line each."""

import time
from dataclasses import dataclass, field


@dataclass
class ServerStats:
    connections_total: int = 0
    connections_open: int = 0          # authenticated sessions and connections still before HELLO
    connections_pending: int = 0       # before HELLO
    connections_refused: int = 0       # refused on arrival: --max-clients sessions already open
    pending_dropped: int = 0           # pre-HELLO connections closed to make room for a newer one
    hello_timeouts: int = 0            # no HELLO within hello_timeout_s
    idle_timeouts: int = 0             # authenticated, nothing sent for idle_timeout_s
    device_limit_refusals: int = 0     # HELLO refused: the device already has max_per_device sessions
    not_hello_first: int = 0           # closed: the first frame's header announced another kind than HELLO
    sessions: int = 0
    auth_failures: int = 0
    requests_ok: int = 0
    split_requests_ok: int = 0         # of requests_ok: tails from a split point
    requests_rejected: int = 0
    frames_bad: int = 0
    busy_replies: int = 0
    by_status: dict = field(default_factory=dict)

    def summary(self):
        """One line for the end of `tinyhost serve`: every kind of refusal counted once, under its own name."""
        return (f"{self.requests_ok} answers ({self.split_requests_ok} split), {self.requests_rejected} refused "
                f"requests, {self.busy_replies} busy replies, {self.auth_failures} authentication failures, "
                f"{self.frames_bad} bad frames; "
                f"{self.connections_total} connections: {self.sessions} sessions, {self.connections_refused} "
                f"refused (too many clients), {self.device_limit_refusals} refused (too many per device), "
                f"{self.pending_dropped} dropped before HELLO (too many waiting), {self.hello_timeouts} without "
                f"HELLO in time, {self.not_hello_first} not starting with HELLO, {self.idle_timeouts} idle")



class RefusalLog:
    """Warnings about refused clients, at most ``burst`` per ``period_s``. Under attack a refusal can come every
    few hundred microseconds, and formatting and writing a line for each costs the server more than the refusal
    itself (and fills the log); ServerStats counts every one. Those not logged are counted in one line when the
    next period starts, or at ``flush()``."""

    def __init__(self, logger, burst=20, period_s=10.0, clock=time.monotonic):
        self._log = logger
        self._burst = burst
        self._period_s = period_s
        self._clock = clock
        self._period_start = None
        self._logged = self._held_back = 0

    def warning(self, message, *args):
        now = self._clock()
        if self._period_start is None or now - self._period_start >= self._period_s:
            self.flush()
            self._period_start, self._logged = now, 0
        if self._logged < self._burst:
            self._logged += 1
            self._log.warning(message, *args)
        else:
            self._held_back += 1

    def flush(self):
        if self._held_back:
            self._log.warning("%d more refused clients not logged (at most %d lines per %g s); the shutdown line "
                              "counts them all", self._held_back, self._burst, self._period_s)
            self._held_back = 0
