"""MicroPython's raw REPL, host side: interrupt, enter, execute (raw-paste mode when the board offers it), reset.

This is how tinyhost gets its runtime going on a board: `import tinyfw.runtime` when the firmware is on the
board's filesystem, or the runtime's source sent through here and run from RAM when it is not. Behaviour follows
MicroPython's documented raw REPL (docs.micropython.org, "MicroPython remote control: mpremote" / "raw REPL").
"""

import logging
import struct
import time

from .errors import BoardNotResponding, DeviceError, TransportError

log = logging.getLogger(__name__)

CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"
RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
SOFT_REBOOT = b"soft reboot"
ENTER_TRIES = 3
PLAIN_CHUNK_BYTES = 256


RUN_MARK = b"TINYHOST-RUN"          # printed by checked_code() just before it runs the code it carries
DAMAGED_MARK = b"TINYHOST-DAMAGED"  # printed instead when the code arrived altered


def code_hash(data):
    """The 24-bit polynomial hash checked_code() computes on the board (any changed, lost or added byte changes
    it, or the length)."""
    h = 0
    for x in data:
        h = (h * 31 + x) & 0xFFFFFF
    return h


def checked_code(code):
    """``code`` wrapped so that the board runs it only if it arrived as sent: the code travels as a bytes literal
    with its length and hash; the board recomputes both, prints RUN_MARK and runs it, or prints DAMAGED_MARK. A
    byte damaged in the wrapper itself makes it fail to compile or run (a traceback without RUN_MARK), so the
    raw REPL, which has no check of its own, never runs altered code unless two faults conspire. It costs the
    code's size in heap while it runs: for small scripts."""
    data = code.encode() if isinstance(code, str) else bytes(code)
    return (f"_c={data!r}\n_h=0\nfor _x in _c:\n _h=(_h*31+_x)&0xFFFFFF\n"
            f"if len(_c)=={len(data)} and _h=={code_hash(data)}:\n print('{RUN_MARK.decode()}')\n exec(_c)\n"
            f"else:\n print('{DAMAGED_MARK.decode()}')\n")


class RawRepl:
    def __init__(self, transport, timeout_s=5.0):
        self.t = transport
        self.timeout_s = timeout_s
        self.raw_paste = None        # unknown until the first exec

    def enter(self):
        """Interrupt whatever runs and get to the raw REPL prompt; BoardNotResponding when nothing answers."""
        seen = b""
        for attempt in range(ENTER_TRIES):
            self.t.write(b"\r" + CTRL_C + CTRL_C)
            seen = self.t.drain(quiet_s=0.1, limit_s=1.0 + attempt)
            self.t.write(b"\r" + CTRL_A)
            got = self.t.read_until(RAW_PROMPT, self.timeout_s / ENTER_TRIES + attempt)
            if got.endswith(RAW_PROMPT):
                return
            seen = got or seen
            log.debug("no raw REPL prompt yet (try %d): %r", attempt + 1, got[-80:])
        detail = f" (it printed {seen[-60:]!r})" if seen else " (no output at all)"
        raise BoardNotResponding(f"the board on {self.t.port} did not enter MicroPython's raw REPL{detail}")

    def exec_start(self, code):
        """Send ``code`` for execution and return once the board has started running it (its output follows)."""
        data = code.encode() if isinstance(code, str) else bytes(code)
        if self.raw_paste is not False and self._raw_paste_write(data):
            return
        self._plain_write(data)

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

    def _raw_paste_write(self, data):
        self.t.write(CTRL_E + b"A" + CTRL_A)
        reply = self._read_exact(2)                 # "R\x01": raw-paste supported, "R\x00": not
        if reply == b"R\x00":
            self.raw_paste = False
            return False
        if reply != b"R\x01":
            # Firmware without raw-paste echoes the bytes instead; get back to a clean raw prompt.
            self.raw_paste = False
            self.t.read_until(RAW_PROMPT, 1.0)
            return False
        self.raw_paste = True
        window = struct.unpack("<H", self._read_exact(2))[0]
        credit = window
        pos = 0
        while pos < len(data):
            flow = self.t.read_available()
            if not flow and credit == 0:
                flow = self.t.read_some(self.timeout_s, max_bytes=1)
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
        got = self.t.read_until(CTRL_D, self.timeout_s)
        if not got.endswith(CTRL_D):
            raise BoardNotResponding("the board did not confirm the end of the raw-paste transfer")
        return True

    def _read_exact(self, n):
        got = b""
        deadline = time.monotonic() + 2.0
        while len(got) < n and time.monotonic() < deadline:
            got += self.t.read_some(max(0.0, deadline - time.monotonic()), max_bytes=n - len(got))
        if len(got) != n:
            raise BoardNotResponding(f"the board did not answer the raw-paste request (got {got!r})")
        return got

    def _plain_write(self, data):
        for i in range(0, len(data), PLAIN_CHUNK_BYTES):
            self.t.write(data[i:i + PLAIN_CHUNK_BYTES])
            time.sleep(0.01)
        self.t.write(CTRL_D)
        ok = self.t.read_until(b"OK", self.timeout_s)
        if not ok.endswith(b"OK"):
            raise BoardNotResponding(f"the raw REPL did not accept the code (it answered {ok[-60:]!r})")

    def soft_reset(self):
        """Soft-reset from the raw REPL (boot.py runs, main.py not) and wait for the raw prompt again."""
        self.t.write(CTRL_D)
        got = self.t.read_until(RAW_PROMPT, max(self.timeout_s, 10.0))
        if not got.endswith(RAW_PROMPT):
            raise BoardNotResponding(f"the board did not come back after a soft reset ({got[-60:]!r})")

    def leave(self):
        """Back to the friendly REPL."""
        try:
            self.t.write(b"\r" + CTRL_B)
        except TransportError:
            pass
