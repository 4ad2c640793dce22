"""MicroPython's raw REPL, host side: interrupt, enter, execute (raw-paste mode when the board offers it), reset.

This is how tinyhost gets its runtime going on a board: `import tinyfw.runtime` when the firmware is on the
board's filesystem, or the runtime's source sent through here and run from RAM when it is not. Behaviour follows
MicroPython's documented raw REPL (docs.micropython.org, "MicroPython remote control: mpremote" / "raw REPL").
"""

import difflib
import logging
import struct
import time

from .errors import BoardNotResponding, DeviceError, TinyhostError, TransportError

log = logging.getLogger(__name__)

CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"
RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
SOFT_REBOOT = b"soft reboot"
ENTER_TRIES = 3
PLAIN_CHUNK_BYTES = 256
CHECKED_PIECE_BYTES = 1024          # exec_checked(): code sent in pieces of at most this much, each checked on
MIN_PIECE_BYTES = 128               # arrival, and at least this much (on a line that damages many)
PIECE_WAIT_S = 0.5                  # a piece's answer is due this long after its wire time
UNIT_WAIT_S = 3.0                   # a checked unit (~4 KB of source) has compiled and run within this, plus
HASH_S_PER_BYTE = 20e-6             # its hashing in Python on the board (generous for a slow microcontroller)


RUN_MARK = b"TINYHOST-RUN"          # printed by checked_code() just before it runs the code it carries
DAMAGED_MARK = b"TINYHOST-DAMAGED"  # printed instead when the code arrived altered
BAD_WHOLE_MARK = "TINYHOST-BAD-WHOLE"   # exec_checked(): its pieces, each intact, did not add up to the code


def code_hash(data):
    """The 24-bit polynomial hash checked_code() computes on the board (any changed, lost or added byte changes
    it, or the length)."""
    h = 0
    for x in data:
        h = (h * 31 + x) & 0xFFFFFF
    return h


def _prompt_damaged(got):
    """``got`` ends with the raw REPL's prompt with a byte or two altered or lost on the line (not waited out)."""
    if not got.endswith(RAW_PROMPT[-3:]):
        return False
    tail = got[-len(RAW_PROMPT):]
    return difflib.SequenceMatcher(None, tail, RAW_PROMPT).ratio() >= 0.9


def _said(mark):
    """Python source that prints ``mark`` without holding it: echoed code (a friendly REPL echoes what it gets)
    is not taken for the board having run it."""
    text = mark.decode() if isinstance(mark, bytes) else mark
    return f"print('{text[:5]}'+'{text[5:]}')"


def _hash_from(start, data):
    h = start
    for x in data:
        h = (h * 31 + x) & 0xFFFFFF
    return h


def checked_code(code):
    """``code`` wrapped so that the board runs it only if it arrived as sent: the code travels as a bytes literal
    with its length and hash, and begins with printing RUN_MARK; the board recomputes both and runs it, or
    prints DAMAGED_MARK. A byte damaged in the wrapper itself makes it fail to compile or run before the code
    starts (a traceback without RUN_MARK), so the raw REPL, which has no check of its own, never runs altered
    code unless two faults conspire. It costs the code's size in heap while it runs: for small scripts."""
    data = (_said(RUN_MARK) + "\n").encode() + (code.encode() if isinstance(code, str) else bytes(code))
    return (f"_c={data!r}\n_h=0\nfor _x in _c:\n _h=(_h*31+_x)&0xFFFFFF\n"
            f"if len(_c)=={len(data)} and _h=={code_hash(data)}:\n exec(_c)\n"
            f"else:\n {_said(DAMAGED_MARK)}\n")


class RawRepl:
    def __init__(self, transport, timeout_s=5.0):
        self.t = transport
        self.timeout_s = timeout_s
        self.raw_paste = None        # unknown until the first exec
        self.piece_bytes = CHECKED_PIECE_BYTES   # exec_checked's piece size, adapted to the line
        self.broken = False          # the raw REPL's own exchange was damaged: enter it afresh before the next

    def enter(self):
        """Interrupt whatever runs and get to the raw REPL prompt; BoardNotResponding when nothing answers."""
        seen = b""
        for attempt in range(ENTER_TRIES):
            self.t.write(b"\r" + CTRL_C + CTRL_C)
            seen = self.t.drain(quiet_s=0.1, limit_s=1.0 + attempt)
            self.t.write(b"\r" + CTRL_A)
            got = self.t.read_until(RAW_PROMPT[-3:], self.timeout_s / ENTER_TRIES + attempt)
            if got.endswith(RAW_PROMPT) or _prompt_damaged(got):
                return
            got += self.t.read_until(RAW_PROMPT, self.timeout_s / ENTER_TRIES)
            if got.endswith(RAW_PROMPT):
                return
            seen = got or seen
            log.debug("no raw REPL prompt yet (try %d): %r", attempt + 1, got[-80:])
        detail = f" (it printed {seen[-60:]!r})" if seen else " (no output at all)"
        raise BoardNotResponding(f"the board on {self.t.port} did not enter MicroPython's raw REPL{detail}")

    def exec_start(self, code, reply_wait_s=None):
        """Send ``code`` for execution and return once the board has started running it (its output follows).
        ``reply_wait_s``: how long to wait for each of the board's answers in the exchange (default: its
        timeout); short for small scripts, so a lost answer costs little."""
        data = code.encode() if isinstance(code, str) else bytes(code)
        if self.raw_paste is not False and self._raw_paste_write(data, reply_wait_s):
            return
        self._plain_write(data, reply_wait_s)

    def exec_checked(self, code, tries=12):
        """Run ``code`` (bytes or str) in the raw REPL's namespace only as sent, without holding a second copy of
        it on the board: a buffer of its size is made and filled in pieces, each a bytes literal checked on
        arrival (length and hash, else sent again, at most ``tries`` times), and the whole runs once its length
        and hash match. Pieces start at CHECKED_PIECE_BYTES, are halved (to MIN_PIECE_BYTES) when one arrives
        damaged and doubled after 8 intact ones. DeviceError with the board's traceback when the code fails."""
        data = (_said(RUN_MARK) + "\n").encode() + (code.encode() if isinstance(code, str) else bytes(code))
        for _ in range(3):
            out = self._exec_in_pieces(data, tries)
            if out is not None:
                return out
            log.info("code sent through the raw REPL in pieces was put together wrong: sending it again")
        raise self._never_intact(tries)

    def _exec_in_pieces(self, data, tries):
        alloc = checked_code(
            f"import gc\n_b=_c=None\ngc.collect()\n_b=bytearray({len(data)})\n"
            f"def _k(c,h):\n for x in c:\n  h=(h*31+x)&0xFFFFFF\n return h\n"
            f"def _w(o,p,n,h):\n if len(p)==n and _k(p,o)==h:\n  memoryview(_b)[o:o+n]=p\n"
            f"  {_said(RUN_MARK)}\n else:\n  {_said(DAMAGED_MARK)}")
        self._run_checked(alloc, PIECE_WAIT_S + 3 * self.t.wire_time_s(len(alloc)), tries)
        off = 0
        clean = damaged = 0
        while off < len(data):
            piece = data[off:off + self.piece_bytes]
            n = len(piece)
            # _w checks the piece and its offset (the hash covers both; a memoryview cannot change the buffer's
            # length) and prints RUN_MARK last, so damage that stops it before then only costs a resend
            script = f"_w({off},{piece!r},{n},{_hash_from(off, piece)})"
            # a piece's answer is due within its wire time: a lost end marker costs a second, not timeout_s
            wait_s = PIECE_WAIT_S + 3 * self.t.wire_time_s(len(script))
            if self._try_checked(script, wait_s, wait_s) is not None:
                off += n
                damaged = 0
                clean += 1
                if clean >= 8 and self.piece_bytes < CHECKED_PIECE_BYTES:
                    self.piece_bytes *= 2
                    clean = 0
                continue
            damaged += 1
            clean = 0
            self.piece_bytes = max(MIN_PIECE_BYTES, self.piece_bytes // 2)
            if damaged >= tries:
                raise self._never_intact(tries)
            log.info("code sent through the raw REPL arrived damaged: sending it again in %d-byte pieces",
                     self.piece_bytes)
        # the whole, once checked, runs (it prints RUN_MARK first; its buffer is given back by the next
        # exec_checked); a resend after damage that stopped this script halfway finds the buffer where the first
        # send left it
        n, h = len(data), code_hash(data)
        out = self._run_checked(f"if _b is not None and len(_b)=={n} and _k(_b,0)=={h}:\n _c=_b\n _b=None\n"
                                f"if _c is not None and len(_c)=={n} and _k(_c,0)=={h}:\n gc.collect()\n exec(_c)\n"
                                f"else:\n {_said(RUN_MARK + b' ' + BAD_WHOLE_MARK.encode())}",
                                UNIT_WAIT_S + n * HASH_S_PER_BYTE, tries)
        return None if out.strip().startswith(BAD_WHOLE_MARK.encode()) else out

    def _run_checked(self, wrapped, timeout_s, tries):
        """Send ``wrapped`` (code that prints RUN_MARK when it found itself intact) until it ran, at most
        ``tries`` times; its output after RUN_MARK. Each send waits for the end of the output at most
        ``timeout_s`` (a lost end marker costs that)."""
        for attempt in range(tries):
            if attempt:
                log.info("code sent through the raw REPL arrived damaged: sending it again (try %d)", attempt + 1)
            out = self._try_checked(wrapped, timeout_s, PIECE_WAIT_S + 3 * self.t.wire_time_s(len(wrapped)))
            if out is not None:
                return out
        raise self._never_intact(tries)

    def _never_intact(self, tries):
        return BoardNotResponding(f"code sent through the raw REPL did not reach the board on {self.t.port} "
                                  f"intact in {tries} tries", hint="check the cable or lower the baud rate (--baud)")

    def _try_checked(self, wrapped, timeout_s, reply_wait_s=None):
        """Send ``wrapped`` once; its output after RUN_MARK, or None when it arrived damaged. A damaged send
        ends at the raw prompt (a DAMAGED_MARK, a syntax error); the raw REPL is entered afresh only when its
        own exchange broke."""
        if self.broken:
            self.enter()
            self.broken = False
        try:
            self.exec_start(wrapped, reply_wait_s)
        except DeviceError as e:                   # the board ended the transfer early: it says why, then >
            log.info("%s", e)
        except TinyhostError as e:                 # the raw-paste exchange itself was damaged
            log.info("%s", e)
            self.broken = True
            return None
        got = self.t.read_until(b"\x04>", timeout_s or self.timeout_s)
        self.broken = not got.endswith(b"\x04>")
        ran = RUN_MARK in got
        if b"MemoryError" in got:
            raise DeviceError(f"the board ran out of memory taking code through the raw REPL: "
                              f"{got.decode(errors='replace').strip()[-300:]}")
        if ran and b"Traceback" in got:
            detail = got.replace(CTRL_D, b" ").decode(errors="replace").strip()
            raise DeviceError(f"code run on the board failed: {detail[-500:]}")
        return got.split(RUN_MARK, 1)[1] if ran else None

    def exec(self, code, timeout_s=None):
        """Run ``code`` to its end; returns its output, raises DeviceError with the traceback when it fails."""
        self.exec_start(code)
        out, err = self.follow(timeout_s or self.timeout_s)
        if err:
            raise DeviceError(f"code run on the board failed: {err.decode(errors='replace').strip()}")
        return out

    def follow(self, timeout_s):
        """Collect the output and the error text of the code that is running, up to the next prompt."""
        out = self.t.read_until(CTRL_D, timeout_s)
        if not out.endswith(CTRL_D):
            raise BoardNotResponding(f"the board did not finish running code within {timeout_s:g} s")
        err = self.t.read_until(CTRL_D, timeout_s)
        if not err.endswith(CTRL_D):
            raise BoardNotResponding("the board did not finish its error report")
        self.t.read_until(b">", 1.0)
        return out[:-1], err[:-1]

    def _raw_paste_write(self, data, reply_wait_s=None):
        wait_s = reply_wait_s or self.timeout_s
        self.t.write(CTRL_E + b"A" + CTRL_A)
        reply = self._read_exact(2, min(2.0, wait_s))    # "R\x01": raw-paste supported, "R\x00": not
        if reply == b"R\x00":
            self.raw_paste = False
            return False
        if reply != b"R\x01":
            if self.raw_paste:                  # it took raw-paste before: this answer was damaged on the line
                raise BoardNotResponding(f"the board's answer to the raw-paste request was damaged ({reply!r})")
            # Firmware without raw-paste echoes the bytes instead; get back to a clean raw prompt.
            self.raw_paste = False
            self.t.read_until(RAW_PROMPT, 1.0)
            return False
        self.raw_paste = True
        window = struct.unpack("<H", self._read_exact(2, min(2.0, wait_s)))[0]
        credit = window
        pos = 0
        while pos < len(data):
            flow = self.t.read_available()
            if not flow and credit == 0:
                flow = self.t.read_some(wait_s, max_bytes=1)
                if not flow:
                    raise BoardNotResponding("the board stopped taking code in raw-paste mode")
            for b in flow:
                if b == CTRL_A[0]:
                    credit += window
                elif b == CTRL_D[0]:        # the board's "stop" (a compile error, memory), or a damaged byte
                    self.t.write(CTRL_D)
                    raise DeviceError("the board ended the raw-paste transfer early")
            n = min(credit, len(data) - pos)
            if n:
                self.t.write(data[pos:pos + n])
                pos += n
                credit -= n
        self.t.write(CTRL_D)
        got = self.t.read_until(CTRL_D, wait_s)
        if not got.endswith(CTRL_D):
            raise BoardNotResponding("the board did not confirm the end of the raw-paste transfer")
        return True

    def _read_exact(self, n, wait_s=2.0):
        got = b""
        deadline = time.monotonic() + wait_s
        while len(got) < n and time.monotonic() < deadline:
            got += self.t.read_some(max(0.0, deadline - time.monotonic()), max_bytes=n - len(got))
        if len(got) != n:
            raise BoardNotResponding(f"the board did not answer the raw-paste request (got {got!r})")
        return got

    def _plain_write(self, data, reply_wait_s=None):
        for i in range(0, len(data), PLAIN_CHUNK_BYTES):
            self.t.write(data[i:i + PLAIN_CHUNK_BYTES])
            time.sleep(0.01)
        self.t.write(CTRL_D)
        ok = self.t.read_until(b"OK", reply_wait_s or self.timeout_s)
        if not ok.endswith(b"OK"):
            raise BoardNotResponding(f"the raw REPL did not accept the code (it answered {ok[-60:]!r})")

    def soft_reset(self):
        """Soft-reset from the raw REPL (boot.py runs, main.py not) and wait for the raw prompt again."""
        self.t.write(CTRL_D)
        got = self.t.read_until(RAW_PROMPT[-3:], max(self.timeout_s, 10.0))
        if got.endswith(RAW_PROMPT) or _prompt_damaged(got):
            return
        if not got:
            raise BoardNotResponding("the board did not come back after a soft reset (no output at all)")
        # its prompt was damaged on the line (or more came after it): ask for the prompt again
        log.info("no raw REPL prompt after the soft reset (%r): entering the raw REPL again", got[-60:])
        self.enter()

    def leave(self):
        """Back to the friendly REPL."""
        try:
            self.t.write(b"\r" + CTRL_B)
        except TransportError:
            pass
