"""One direction of the virtual board's serial link: UART line rate and fault injection, no I/O.

A UART at ``baud`` with 8N1 framing moves ``baud / 10`` bytes per second. :class:`Line` queues the bytes that entered
the wire and says which of them have arrived by a given time; the relay asks it when to wake up next. Bytes are
handed out in slices of about one millisecond of line time so a bulk transfer costs about a thousand wake-ups a
second, while the last byte of a message is released exactly when it would have arrived.

Faults are drawn from a seeded random stream, so a test that sets a seed sees the same damage every run. Drops and
corruptions are placed with geometric gaps (one random draw per fault, not per byte).
"""

import math
import random

SLICE_S = 0.001                 # bytes are released in slices of about this much line time
BITS_PER_BYTE = 10              # 8N1: start bit, 8 data bits, stop bit


class _FaultStream:
    """Positions of faults at a fixed per-byte probability, as gaps between them."""

    def __init__(self, rate, rng):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be between 0 and 1, got {rate}")
        self.rate = rate
        self._rng = rng
        self._log_keep = math.log1p(-rate) if 0.0 < rate < 1.0 else None
        self._bytes_to_next = self._gap()

    def _gap(self):
        if self.rate <= 0.0:
            return math.inf
        if self.rate >= 1.0:
            return 0
        # Number of clean bytes before the next fault: geometric with success probability `rate`.
        return int(math.log(1.0 - self._rng.random()) / self._log_keep)

    def positions(self, nbytes):
        """Indexes in the next ``nbytes`` bytes that get this fault."""
        hits = []
        pos = self._bytes_to_next
        while pos < nbytes:
            hits.append(pos)
            pos += 1 + self._gap()
        self._bytes_to_next = pos - nbytes
        return hits


class Line:
    """Bytes in flight in one direction: ``push`` what enters the wire, ``take`` what has arrived."""

    def __init__(self, baud, drop_rate=0.0, corrupt_rate=0.0, seed=None, name="line"):
        if baud <= 0:
            raise ValueError(f"baud must be positive, got {baud}")
        self.baud = baud
        self.byte_time_s = BITS_PER_BYTE / baud
        self.slice_bytes = max(1, int(SLICE_S / self.byte_time_s + 1e-6))
        self._name = name
        self._pending = bytearray()
        self._line_start_s = 0.0        # when the first pending byte started on the wire
        self._line_free_s = 0.0         # when the wire finishes the last byte pushed so far
        self.bytes_dropped = 0
        self.bytes_corrupted = 0
        self.set_faults(drop_rate, corrupt_rate, seed)

    def set_faults(self, drop_rate=0.0, corrupt_rate=0.0, seed=None):
        """(Re)start fault injection; with a seed the faults are the same every run."""
        base = f"{seed}-{self._name}" if seed is not None else None
        # Separate streams for where faults fall and what a corrupted byte becomes, so the damage does not depend
        # on how the bytes were split into writes.
        self._drop = _FaultStream(drop_rate, random.Random(f"{base}-drop" if base else None))
        self._corrupt = _FaultStream(corrupt_rate, random.Random(f"{base}-corrupt" if base else None))
        self._corrupt_value_rng = random.Random(f"{base}-value" if base else None)

    @property
    def faulty(self):
        return self._drop.rate > 0.0 or self._corrupt.rate > 0.0

    def damage(self, data):
        """``data`` as it leaves the wire: some bytes flipped to other values, some lost."""
        if not self.faulty or not data:
            return data
        out = bytearray(data)
        for i in self._corrupt.positions(len(out)):
            out[i] ^= self._corrupt_value_rng.randrange(1, 256)
            self.bytes_corrupted += 1
        drops = self._drop.positions(len(out))
        if drops:
            self.bytes_dropped += len(drops)
            for i in reversed(drops):
                del out[i]
        return bytes(out)

    def __len__(self):
        return len(self._pending)

    def push(self, data, now_s):
        """Put ``data`` on the wire at ``now_s`` (after faults); it queues behind what is still in flight."""
        data = self.damage(data)
        if not data:
            return
        if not self._pending:
            self._line_start_s = max(now_s, self._line_free_s)
        self._pending += data
        self._line_free_s = self._line_start_s + len(self._pending) * self.byte_time_s

    def arrived(self, now_s):
        """How many pending bytes have fully crossed the wire by ``now_s``."""
        if not self._pending:
            return 0
        done = int((now_s - self._line_start_s) / self.byte_time_s + 1e-6)   # float slack, not early
        return max(0, min(done, len(self._pending)))

    def due_s(self):
        """When the relay should next call ``take``: the end of the next slice (or of the last byte), or None."""
        if not self._pending:
            return None
        return self._line_start_s + min(len(self._pending), self.slice_bytes) * self.byte_time_s

    def take(self, now_s):
        """The bytes that have arrived by ``now_s``, once a whole slice (or the rest) is there; else b''."""
        count = self.arrived(now_s)
        if count == 0 or count < min(len(self._pending), self.slice_bytes):
            return b""
        data = bytes(self._pending[:count])
        del self._pending[:count]
        self._line_start_s += count * self.byte_time_s
        return data
