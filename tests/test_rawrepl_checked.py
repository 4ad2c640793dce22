"""Code sent through the raw REPL (which has no check of its own) runs only as sent: checked_code() wraps it with
its length and hash, and any single damaged, lost or added byte makes the board print the damage mark or fail
before running it. The wrapper is run here by CPython; MicroPython runs the same statements."""

import contextlib
import io
import warnings

from tinyhost.client import START_CODE
from tinyhost.rawrepl import DAMAGED_MARK, RUN_MARK, checked_code

CODE = "print('RAN', 6 * 7)\n"


def _run(src):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")             # damaged source draws SyntaxWarnings
        try:
            exec(compile(src, "<raw repl>", "exec"), {})
        except Exception as e:            # what the raw REPL would report as a traceback
            return out.getvalue(), e
    return out.getvalue(), None


def test_intact_code_runs_once_after_the_mark():
    out, err = _run(checked_code(CODE))
    assert err is None and out == f"{RUN_MARK.decode()}\nRAN 42\n"


def _near(line, mark):
    """``line`` is ``mark`` with at most one byte changed or lost (the wrapper's own print, damaged)."""
    mark = mark.decode()
    if len(line) == len(mark):
        return sum(a != b for a, b in zip(line, mark)) <= 1
    return len(line) == len(mark) - 1 and any(mark[:i] + mark[i + 1:] == line for i in range(len(mark)))


def test_no_single_fault_runs_altered_code():
    wrapped = checked_code(CODE).encode()
    altered = []
    for pos in range(len(wrapped)):
        for damaged in (wrapped[:pos] + bytes([wrapped[pos] ^ 0x04]) + wrapped[pos + 1:],   # a changed byte
                        wrapped[:pos] + wrapped[pos + 1:]):                                # a lost byte
            try:
                src = damaged.decode()
            except UnicodeDecodeError:
                continue
            out, _ = _run(src)
            lines = out.splitlines()
            if lines and (_near(lines[0], RUN_MARK) or _near(lines[0], DAMAGED_MARK)):
                lines = lines[1:]
            if lines not in ([], ["RAN 42"]):                 # anything else came from altered code
                altered.append((pos, out))
    assert altered == []


def test_the_start_code_is_sent_checked():
    assert "TINYFW-ABSENT" in checked_code(START_CODE)


def test_a_lost_ready_frame_is_recovered_with_hello(monkeypatch):
    from tinyhost import protocol as P
    from tinyhost.client import Device

    class Line:
        port = "fake"

        def __init__(self):
            ready = bytearray(P.encode_frame(P.T.READY, 0))
            ready[-1] ^= 1                                   # READY damaged on the line
            self.out = RUN_MARK + b"\n" + bytes(ready)

        def read_some(self, timeout_s, max_bytes=None):
            data, self.out = self.out, b""
            return data

        def write(self, data):
            pass

        def wire_time_s(self, nbytes):
            return nbytes * 10 / 115200

    dev = Device(Line())
    asked = []
    monkeypatch.setattr(dev, "_hello", lambda tries=4, timeout_s=None: asked.append(tries))
    assert dev._await_ready(allow_absent=True, checked=True) is True      # at once, not after 10 s
    assert asked == [3]
