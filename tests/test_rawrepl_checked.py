"""Code sent through the raw REPL (which has no check of its own) runs only as sent: checked_code() wraps it with
its length and hash, and any single damaged, lost or added byte makes the board print the damage mark or fail
before running it. The wrapper is run here by CPython; MicroPython runs the same statements."""

import contextlib
import io
import warnings

import pytest

from tinyhost.client import START_CODE
from tinyhost.errors import BoardNotResponding
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


@pytest.mark.parametrize("damage", ["crc", "magic", "lost bytes"])
def test_a_lost_ready_frame_is_recovered_with_hello(monkeypatch, damage):
    import time

    from tinyhost import protocol as P
    from tinyhost.client import Device

    class Line:
        port = "fake"

        def __init__(self):
            ready = bytearray(P.encode_frame(P.T.READY, 0, b"tinyfw=0.1.0\nprotocol=1\xff"))
            if damage == "lost bytes":                       # the frame stops arriving two bytes short
                del ready[12:14]
            else:                                            # its CRC fails; without its magic it reads as bytes
                ready[-1 if damage == "crc" else 0] ^= 1     # outside any frame
            self.out = RUN_MARK + b"\n" + bytes(ready)

        def read_some(self, timeout_s, max_bytes=None):
            data, self.out = self.out, b""
            if not data:                                     # a serial port waits for bytes that do not come
                self.waited_s += timeout_s
                time.sleep(timeout_s)
            return data

        def write(self, data):
            pass

        def wire_time_s(self, nbytes):
            return nbytes * 10 / 115200

    line = Line()
    line.waited_s = 0.0
    dev = Device(line)
    asked = []
    monkeypatch.setattr(dev, "_hello", lambda tries=4, timeout_s=None, loader=False: asked.append(tries))
    assert dev._await_ready(allow_absent=True, checked=True) is True
    assert asked == [3] and line.waited_s < 1.0               # asked at once, not after its 10 s for READY


class _Board:
    """The raw REPL of a board, run by CPython in one namespace, behind a line that alters one byte of the sends
    whose numbers are in ``damage`` (a byte inside a bytes literal, where nothing else catches it)."""

    def __init__(self, damage):
        self.namespace = {}
        self.damage = set(damage)
        self.sends = 0
        self.out = b""
        self.printed = b""

    def run(self, code):
        self.sends += 1
        if self.sends in self.damage:
            at = code.index("b'") + 4 if "b'" in code else len(code) // 2
            code = code[:at] + chr(ord(code[at]) ^ 0x01) + code[at + 1:]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                exec(compile(code, "<stdin>", "exec"), self.namespace)
            except Exception as e:
                out.write(f"\x04Traceback (most recent call last):\n{type(e).__name__}: {e}\n")
        self.out = out.getvalue().encode() + b"\x04\x04>"
        self.printed += self.out


def _repl(board):
    from tinyhost.rawrepl import RawRepl

    class Line:
        port = "fake"

        def read_until(self, marker, timeout_s):
            out, board.out = board.out, b""
            return out

        def wire_time_s(self, nbytes):
            return nbytes * 10 / 115200

    repl = RawRepl(Line())
    repl.exec_start = lambda code, reply_wait_s=None: board.run(code if isinstance(code, str) else code.decode())
    repl.enter = lambda: None
    return repl


def test_code_sent_in_pieces_runs_only_as_sent():
    source = "".join(f"def f{i}():\n    return {i} * 7  # {'x' * 40}\n" for i in range(60)) + "print('DEFINED')\n"
    board = _Board(damage={2, 3, 7, 11})
    repl = _repl(board)
    repl.piece_bytes = 512
    out = repl.exec_checked(source)
    assert b"DEFINED" in out
    assert [board.namespace[f"f{i}"]() for i in range(60)] == [i * 7 for i in range(60)]
    assert board.sends > len(source) // 512 + 2 + 4          # the damaged pieces were sent again


def test_a_damaged_piece_never_runs():
    source = "print('SECRET', 1)\n" * 200
    board = _Board(damage=set(range(2, 200)))                 # every piece damaged
    repl = _repl(board)
    with pytest.raises(BoardNotResponding, match="intact in 4 tries"):
        repl.exec_checked(source, tries=4)
    assert b"SECRET" not in board.printed


def test_a_raw_prompt_damaged_on_the_line_is_taken():
    from tinyhost.rawrepl import RawRepl

    class Line:
        port = "fake"
        reads = 0

        def write(self, data):
            pass

        def drain(self, quiet_s, limit_s):
            return b""

        def read_until(self, marker, timeout_s):
            self.reads += 1
            return b"\r\n>>> raw REPL; CTRL-B t exit\r\n>"          # one byte lost

    line = Line()
    RawRepl(line, timeout_s=0.3).enter()                  # was: BoardNotResponding after three full waits
    assert line.reads == 1


@pytest.mark.parametrize("after_reset, entered_again", [
    (b"OK\r\nMPY: soft reboot\r\naw\xfaREPL; CTRL-B to exit\r\n>", False),    # one byte lost, one altered
    (b"OK\r\nMPY: soft reboot\r\nraw RE\xfa\xfa\xe7\xfaTRL\xfa\r\n>", True)])   # too damaged to tell
def test_a_soft_reset_whose_prompt_was_damaged_is_taken(after_reset, entered_again):
    from tinyhost.rawrepl import RawRepl

    class Line:
        port = "fake"

        def __init__(self):
            self.sent = b""
            self.answers = [after_reset, b"\r\nraw REPL; CTRL-B to exit\r\n>"]

        def write(self, data):
            self.sent += data

        def drain(self, quiet_s, limit_s):
            return b""

        def read_until(self, marker, timeout_s):
            return self.answers.pop(0)

    line = Line()
    RawRepl(line, timeout_s=0.3).soft_reset()             # was: BoardNotResponding, the flash stopped
    assert len(line.answers) == (0 if entered_again else 1)
    assert line.sent.endswith(b"\x01") == entered_again
