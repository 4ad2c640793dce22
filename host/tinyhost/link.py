"""Reliable frame exchange with the tinyfw runtime: sequence numbers, timeouts, bounded retries, a sliding window.

:class:`Link` sits between the byte transport and the typed client. ``request`` sends one request and returns its
reply (retrying the same sequence number, so a retried request whose reply was lost is not executed twice);
``send_data`` streams a file as consecutive data frames with up to ``window`` of them in flight (go-back-N on NAK
or timeout). Every wait has a deadline; every retry loop stops after ``MAX_TRIES``.
"""

import collections
import logging
import math
import re
import random
import time
from dataclasses import dataclass

from . import protocol as P
from .errors import BoardNotResponding, DeviceError, DoesNotFit, ModelError, ProtocolError

log = logging.getLogger(__name__)

MAX_TRIES = 8                  # sends of one frame before giving up
# A data frame NAKed is sent again at once, so those tries are cheap: on a damaging line a NAK for a frame can also
# come from the frame after it, sent before the NAK arrived (go-back-N), and a busy board answers late.
NAK_TRIES = 32
BASE_TIMEOUT_S = 0.4           # reply timeout on top of the wire time (a loaded host or board answers late)
TEXT_TAIL_BYTES = 2048
STALL_S = 0.08                 # a frame from the device that stops arriving this long has lost bytes
# Data frames are sized to the line (data_frames()): the chunk and the frames in flight that send a file in the least
# expected line time at the damage rate per byte seen on data frames (each acknowledged or failed frame's bytes and
# failures, the past weighed down by DATA_DAMAGE_MEMORY per frame).
MIN_CHUNK_BYTES = 32           # smallest data chunk (a frame's overhead is 20 bytes)
DATA_ROUND_TRIP_BYTES = 48     # an ACK's turnaround beyond the data frame, in byte times (its 14 bytes, the board)
DATA_DAMAGE_MEMORY = 0.97
# The raw REPL's "code finished" marker, after the program's output: end of output (\x04), the exception's text if
# any, end of that (\x04), the prompt. Its last two bytes alone also occur in binary data.
REPL_END = re.compile(rb"\x04(?:[^\x04]*Traceback[^\x04]*)?\x04>")
DAMAGED = P.Frame(-1, -1)      # next_frame(): a frame from the device arrived damaged
# Text a board prints only after it was reset or its runtime ended: looked for while a request waits, so a reset
# board is recognised as soon as it says so, not after every try's timeout.
RESET_TEXT = (b"soft reboot\r\n", b"raw REPL; CTRL-B to exit", b'Type "help()" for more information.')
POLL_S = 0.25                  # a request's wait is cut into slices this long to look at the text in between
# Written after every frame the host sends: a byte of the frame lost on the line makes the device read these into
# the frame and fail its CRC at once (a NAK within the frame's wire time) instead of waiting out its 150 ms byte
# timeout for a byte that will not come. Outside a frame they are text the device ignores.
FRAME_PAD = b"\x00\x00"


class FramesDamaged(ProtocolError):
    """A request's sends were answered (NAKs, damaged replies) but none got through whole."""


@dataclass
class LinkStats:
    frames_sent: int = 0
    frames_retried: int = 0     # frames sent again (timeout or NAK)
    naks_received: int = 0
    timeouts: int = 0
    frames_bad: int = 0         # damaged frames from the device
    stale_frames: int = 0       # replies to requests already answered


def device_error(frame, what):
    """The exception for an ERR reply to ``what``."""
    code, message = P.parse_error(frame.payload)
    text = f"{what}: {message}"
    if code in (P.ErrorCode.NO_SPACE, P.ErrorCode.NO_MEMORY):
        err = DoesNotFit(text, hint="free space on the board (`mpremote connect PORT fs ls :/models` lists the "
                         "models there, `mpremote connect PORT fs rm :/models/NAME` removes one) or use a smaller "
                         "model" if code == P.ErrorCode.NO_SPACE else "use a smaller model or a board with more RAM "
                         "(`tinyhost model inspect MODEL` says which boards it fits and why not)")
    elif code in (P.ErrorCode.MODEL, P.ErrorCode.NO_MODEL):
        err = ModelError(text, hint="load a supported int8 .tflite model first" if code == P.ErrorCode.NO_MODEL
                         else "check the model with `tinyhost model inspect MODEL`")
    elif code == P.ErrorCode.HASH_MISMATCH:
        err = ProtocolError(text)
    elif code == P.ErrorCode.NO_ENGINE:
        err = DeviceError(text, hint="run `tinyhost flash` to put the firmware on the board")
    else:
        err = DeviceError(text, hint="see the message; `tinyhost info` shows the board's state")
    err.code = code
    err.device_message = message
    return err


class Link:
    def __init__(self, transport, timeout_s=5.0):
        self.t = transport
        self.timeout_s = timeout_s
        self.decoder = P.FrameDecoder()
        self.frames = collections.deque()
        self.seq = random.randrange(0x10000)
        self.max_payload = 1024          # until HELLO tells what the device takes
        self.window = 1
        self.data_bytes = 0.0            # data frames' bytes on the line (acknowledged or failed) and their
        self.data_failures = 0.0         # failures, both weighed down by DATA_DAMAGE_MEMORY per frame
        self.resync = False              # next request carries FLAG_SYNC
        self.stats = LinkStats()
        self.text_tail = bytearray()
        self.text_seen = 0               # text bytes received in all (text_tail keeps the last TEXT_TAIL_BYTES)
        self.on_text = None              # callback(bytes) for text from the device (EEMBC output, prints)
        self.junk = False                # binary bytes outside frames arrived: the remains of a damaged frame
        self.last_sends = 0              # sends the last request took (1: its first send was answered)

    # -- receiving ------------------------------------------------------------------------------------------
    def next_frame(self, deadline, report_damage=False):
        """The next frame from the device, or None once ``deadline`` (time.monotonic) has passed.

        With ``report_damage``, a damaged frame from the device (a reply lost on the line) returns ``DAMAGED`` at
        once, so the caller can ask again without waiting for its timeout: a frame that fails its checks, one that
        stops arriving halfway, or binary bytes outside any frame (a frame whose magic was hit) once the line has
        been quiet for ``STALL_S``.
        """
        while not self.frames:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            partial = report_damage and (self.decoder.pending() or self.junk)
            data = self.t.read_some(min(left, STALL_S if partial else 0.25))
            if data:
                if self._feed(data) and report_damage and not self.frames:
                    return DAMAGED
            elif partial and time.monotonic() < deadline:
                # a frame stopped arriving halfway, or arrived without its magic: bytes were lost on the line
                self.junk = False
                bad = self.decoder.frames_bad
                self.frames.extend(self.decoder.discard_pending())
                self.stats.frames_bad += self.decoder.frames_bad - bad
                if not self.frames:
                    return DAMAGED
        return self.frames.popleft()

    def _feed(self, data):
        """Decode ``data``; returns how many damaged frames it held."""
        bad = self.decoder.frames_bad
        self.frames.extend(self.decoder.feed(data))
        damaged = self.decoder.frames_bad - bad
        self.stats.frames_bad += damaged
        text = self.decoder.take_text()
        if text:
            if max(text) >= 0x80:                # the device prints text; bytes like these are a frame's remains
                self.junk = True
            self.text_seen += len(text)
            self.text_tail += text
            del self.text_tail[:-TEXT_TAIL_BYTES]
            log.debug("text from the device: %r", text)
            if self.on_text:
                self.on_text(text)
        return damaged

    def take_text(self):
        text = bytes(self.text_tail)
        self.text_tail.clear()
        return text

    def _check_alive(self, since=None):
        """Raise when the text from the device shows that the runtime has ended (back at the REPL) or the board was
        reset. ``since`` (a ``text_seen`` count): look only at the text that came after it."""
        tail = bytes(self.text_tail)
        if since is not None:
            tail = tail[len(tail) - min(len(tail), self.text_seen - since):]
        if not tail:
            return
        reset = next((m for m in RESET_TEXT if m in tail), None)
        if reset or REPL_END.search(tail) or b"Traceback (most recent call last)" in tail:
            text = tail.replace(b"\x04", b"\n").decode(errors="replace")
            lines = ("".join(c for c in line if c.isprintable()).strip() for line in text.splitlines())
            detail = " / ".join(line for line in lines if line)       # one line, printable only
            what = "was reset" if reset else "stopped"
            raise DeviceError(f"the tinyfw runtime on the board {what}: {detail[-400:]}",
                              hint="reconnect (tinyhost starts it again); report the traceback if it repeats")

    # -- sending --------------------------------------------------------------------------------------------
    def reply_timeout_s(self, out_bytes, in_bytes=P.OVERHEAD_BYTES):
        return BASE_TIMEOUT_S + 3.0 * self.t.wire_time_s(out_bytes + in_bytes)

    def next_seq(self):
        seq = self.seq
        self.seq = (seq + 1) & 0xFFFF
        return seq

    def request(self, ftype, payload=b"", flags=0, timeout_s=None, on_event=None, tries=MAX_TRIES,
                expect_bytes=P.OVERHEAD_BYTES, what=None, damage_tries=None, max_timeout_s=None):
        """Send one request, return its OK/ACK reply frame; raises the mapped error for an ERR reply.

        ``timeout_s`` is the wait for a reply to one send (default: from the wire time of both frames);
        an EVENT frame for this request (``on_event(index, value)``) starts the wait again. At most ``tries``
        sends; with ``damage_tries``, sends after a NAK or a damaged reply (answered at once, so cheap) count
        against that instead, and only timeouts against ``tries``: a large frame on a noisy line, damaged on most
        sends, still gets through while a silent board is given up on as soon. With ``max_timeout_s`` the wait
        doubles after each try that timed out, up to that: a first wait close to the expected reply time makes
        a lost frame cheap, and a board slower than expected is still waited for.
        """
        seq = self.next_seq()
        if self.resync:                           # an interrupted transfer left the device's count behind
            flags |= P.FLAG_SYNC
            self.resync = False
        raw = P.encode_frame(ftype, seq, payload, flags) + FRAME_PAD
        what = what or P.Frame(ftype, seq).name
        wait_s = timeout_s if timeout_s is not None else self.reply_timeout_s(len(raw), expect_bytes)
        heard = False
        waited_s = 0.0
        text_mark = self.text_seen
        attempt = timeouts = 0
        cause = ""
        while True:
            if attempt:
                self.stats.frames_retried += 1
                log.info("%s seq %d: sending again after %s (try %d)", what, seq, cause, attempt + 1)
            self.junk = False
            self.t.write(raw)
            self.stats.frames_sent += 1
            deadline = time.monotonic() + wait_s
            while True:
                f = self.next_frame(min(deadline, time.monotonic() + POLL_S), report_damage=True)
                if f is None and time.monotonic() < deadline:
                    self._check_alive(since=text_mark)      # a reset board says so: no need to wait out the try
                    continue
                if f is None:
                    self.stats.timeouts += 1
                    timeouts += 1
                    cause = f"no reply in {wait_s:.1f} s"
                    waited_s += wait_s
                    self._check_alive()
                    if max_timeout_s is not None:
                        wait_s = max(wait_s, min(max_timeout_s, wait_s * 2))
                    break
                heard = True
                if f is DAMAGED:
                    self._check_alive(since=text_mark)      # a board's boot garbage, then its banner
                    cause = "a damaged reply"
                    break                         # the reply was damaged: ask again (the device answers a copy)
                if f.ftype == P.T.READY:
                    raise ProtocolError("the tinyfw runtime restarted in the middle of a session",
                                        hint="the board was reset; reconnect")
                if f.ftype == P.T.NAK:
                    self.stats.naks_received += 1
                    cause = "a NAK"
                    if 0 < ((seq - P.parse_nak(f.payload)[0]) & 0xFFFF) < 0x8000:
                        # the device still waits for an earlier frame that will not come (an interrupted
                        # transfer); it has not seen this seq, so a SYNC copy cannot run twice
                        raw = P.encode_frame(ftype, seq, payload, flags | P.FLAG_SYNC) + FRAME_PAD
                    break                         # else: send the same again (it gets the cached reply if it ran)
                if f.seq != seq:
                    self.stats.stale_frames += 1
                    continue
                if f.ftype == P.T.EVENT:
                    if on_event:
                        on_event(*P.parse_event(f.payload))
                    deadline = time.monotonic() + wait_s
                    continue
                if f.ftype == P.T.ERR:
                    raise device_error(f, what)
                if f.ftype == P.T.OK or (f.ftype == P.T.ACK and ftype == P.T.PUT_DATA):
                    self.last_sends = attempt + 1
                    return f
                if f.ftype == P.T.ACK:
                    # the device took this seq for a copy of an old frame: make it take this one as new
                    cause = "an ACK for an old frame"
                    raw = P.encode_frame(ftype, seq, payload, flags | P.FLAG_SYNC) + FRAME_PAD
                    break
                self.stats.stale_frames += 1
            attempt += 1
            if damage_tries is None:
                if attempt >= tries:
                    break
            elif timeouts >= tries or attempt - timeouts >= damage_tries:
                break
        tries = attempt
        self.last_sends = attempt
        if not heard:
            raise BoardNotResponding(f"no answer to {what} from the board on {self.t.port} "
                                     f"({tries} tries, {waited_s:.1f} s in all)")
        raise FramesDamaged(f"{what} failed {tries} times (damaged frames: {self.stats.frames_bad}, "
                            f"NAKs: {self.stats.naks_received})")

    @property
    def data_damage_per_byte(self):
        """The damage rate per byte the data frames have met (0 until one failed)."""
        return self.data_failures / self.data_bytes if self.data_bytes else 0.0

    def _data_outcome(self, frame_bytes, failed):
        self.data_bytes = self.data_bytes * DATA_DAMAGE_MEMORY + frame_bytes + P.OVERHEAD_BYTES
        self.data_failures = self.data_failures * DATA_DAMAGE_MEMORY + failed

    def send_data(self, ftype, data, pack, progress=None, what="data"):
        """Send ``data`` as consecutive frames ``pack(offset, chunk)``, up to ``self.window`` in flight, each
        acknowledged by an ACK (go-back-N on NAK or timeout). ``progress(bytes_acknowledged)`` as ACKs arrive.

        The chunk and the frames in flight follow the line: :func:`data_frames` at the damage rate the data frames
        have met so far (this transfer's and earlier ones'). Unacknowledged frames are cut anew after a loss. That
        is safe because the device takes data by offset: a frame overlapping bytes it has already written only adds
        the bytes past its end.
        """
        total = len(data)
        if total == 0:
            return
        first = self.seq
        frames = []                     # index -> (offset, length, raw); index i has seq first + i
        self.seq_used = 0
        try:
            self._send_frames(ftype, data, pack, progress, what, first, frames)
        except BaseException:
            self.resync = True          # the device may be left waiting for a frame that will not come
            raise
        finally:
            self.seq = (first + self.seq_used) & 0xFFFF

    def _send_frames(self, ftype, data, pack, progress, what, first, frames):
        total = len(data)
        max_chunk = self.max_payload - len(pack(0, b""))
        frame_extra = len(pack(0, b"")) + P.OVERHEAD_BYTES + len(FRAME_PAD)
        base = next_i = 0
        tries = naks = 0
        deadline = 0.0

        def end_of(i):
            return frames[i][0] + frames[i][1] if i >= 0 else 0

        def inflight_bytes():
            return sum(len(frames[i][2]) for i in range(base, next_i)) or P.OVERHEAD_BYTES

        def fit():
            return data_frames(self.data_damage_per_byte, max_chunk, max(1, self.window), frame_extra)

        chunk, window = fit()
        while base < len(frames) or end_of(len(frames) - 1) < total:
            sent_any = False
            while next_i - base < window and (next_i < len(frames) or end_of(len(frames) - 1) < total):
                if next_i == len(frames):
                    off = end_of(next_i - 1)
                    n = min(chunk, total - off)
                    if len(frames) >= 0x8000:
                        raise ValueError("too many frames for one transfer")
                    frames.append((off, n, P.encode_frame(ftype, (first + next_i) & 0xFFFF,
                                                          pack(off, data[off:off + n])) + FRAME_PAD))
                    self.seq_used = max(self.seq_used, len(frames))
                self.t.write(frames[next_i][2])
                self.stats.frames_sent += 1
                sent_any = True
                next_i += 1
            if sent_any:
                deadline = time.monotonic() + self.reply_timeout_s(inflight_bytes())
            f = self.next_frame(deadline, report_damage=True)
            if f is None or f is DAMAGED:
                if f is None:
                    self.stats.timeouts += 1
                    self._check_alive()
                log.info("%s: %s for frame %d (%d in flight, chunk %d): sending again", what,
                         "no ACK" if f is None else "damaged reply", base, next_i - base, chunk)
                tries += 1
                if tries >= MAX_TRIES:
                    raise ProtocolError(f"{what}: bytes {end_of(base - 1)}.. not acknowledged after {tries} tries")
                self._data_outcome(len(frames[base][2]), 1)
                self.stats.frames_retried += next_i - base
                next_i = base                     # go back to the oldest unacknowledged frame, cut anew
                del frames[base:]
                chunk, window = fit()
                continue
            idx = (f.seq - first) & 0xFFFF
            if f.ftype == P.T.ACK and base <= idx < next_i:
                for i in range(base, idx + 1):
                    self._data_outcome(len(frames[i][2]), 0)
                base = idx + 1
                tries = naks = 0
                chunk, window = fit()
                deadline = time.monotonic() + self.reply_timeout_s(inflight_bytes())
                if progress:
                    progress(end_of(base - 1))
            elif f.ftype == P.T.NAK:
                self.stats.naks_received += 1
                idx = (P.parse_nak(f.payload)[0] - first) & 0xFFFF
                if base <= idx < next_i:
                    for i in range(base, idx):
                        self._data_outcome(len(frames[i][2]), 0)
                    self._data_outcome(len(frames[idx][2]), 1)
                    self.stats.frames_retried += next_i - idx
                    base = next_i = idx           # everything before idx arrived; idx and later were dropped
                    del frames[idx:]
                    chunk, window = fit()
                    naks += 1
                    if naks >= NAK_TRIES:
                        raise ProtocolError(f"{what}: bytes {end_of(idx - 1)}.. rejected {naks} times")
            elif f.ftype == P.T.ERR and idx < len(frames):
                raise device_error(f, what)
            elif f.ftype == P.T.READY:
                raise ProtocolError("the tinyfw runtime restarted in the middle of a transfer",
                                    hint="the board was reset; reconnect and retry")
            else:
                self.stats.stale_frames += 1


def data_frames(damage_per_byte, max_chunk, max_window, frame_extra=4 + P.OVERHEAD_BYTES + len(FRAME_PAD)):
    """(chunk bytes, frames in flight) that send data in the least expected line time at ``damage_per_byte``, in
    go-back-N: a frame of f bytes (its chunk plus ``frame_extra``) and its ACK get through with probability
    q = exp(-rate x (f + ACK)); with w frames in flight each takes max(f, (f + DATA_ROUND_TRIP_BYTES) / w) of
    line time, and a lost one costs it and the w - 1 sent behind it. Expected byte times per data byte:
    (max(f, (f + round trip) / w) + (1 - q)(w - 1) f) / (q x chunk). On a clean line: the largest chunk and
    the most frames in flight."""
    best = None
    n = max_chunk
    sizes = []
    while n > MIN_CHUNK_BYTES:
        sizes.append(n)
        n = int(n / 1.25)
    sizes.append(min(MIN_CHUNK_BYTES, max_chunk))
    for n in sizes:
        f = n + frame_extra
        q = math.exp(-damage_per_byte * (f + P.OVERHEAD_BYTES))
        for w in range(max_window, 0, -1):
            cost = (max(f, (f + DATA_ROUND_TRIP_BYTES) / w) + (1 - q) * (w - 1) * f) / (q * n)
            if best is None or cost < best[0] - 1e-12:
                best = (cost, n, w)
    return best[1], best[2]
