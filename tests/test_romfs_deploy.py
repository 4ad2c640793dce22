"""Writing a ROMFS image through the raw REPL when the board's filesystem cannot stage it: the header chunk last,
a chunk the board reports damaged sent again (a bounded number of times), the partition's hash checked. A scripted
board stands in (the virtual one runs the same path in tests/test_sim_nano33ble.py)."""

import contextlib
import hashlib
import re

import pytest

from tinyhost import boards, romfs
from tinyhost.errors import DeviceError

PUT = re.compile(r"^put\((\d+), ")


class ScriptedBoard:
    """Answers deploy's scripts: ``fs_free`` bytes free, a partition that reads back as ``partition``, the chunk
    at ``damaged_offset`` reported damaged ``damaged_times`` times."""

    def __init__(self, image, fs_free, damaged_offset=None, damaged_times=0):
        self.image, self.fs_free = image, fs_free
        self.damaged_offset, self.damaged_times = damaged_offset, damaged_times
        self.partition = b""
        self.puts, self.resets, self.staged = [], 0, []

    # the Device side
    def run_script(self, code, timeout_s=None, fresh=False):
        if "statvfs" in code:
            return b"%d\r\n" % self.fs_free
        if "hashlib" in code:
            return b"-\r\n"
        raise AssertionError(f"unexpected script {code[:60]!r}")

    def put_file(self, data, remote, progress=None):
        self.staged.append(remote)

    @contextlib.contextmanager
    def raw_repl(self, fresh=False):
        assert fresh, "the partition is rewritten from a fresh start"
        yield self

    # the RawRepl side
    def exec(self, code, timeout_s=None):
        m = PUT.match(code)
        if m:
            off = int(m.group(1))
            if off == self.damaged_offset and self.damaged_times:
                self.damaged_times -= 1
                raise DeviceError("code run on the board failed: ValueError: chunk arrived damaged")
            self.puts.append(off)
            return b""
        if "hashlib" in code:
            return hashlib.sha256(self.image).hexdigest().encode() + b"\r\n"
        return b""

    def soft_reset(self):
        self.resets += 1


def image_of(nbytes):
    return b"\xd2\xcd\x31" + bytes(nbytes - 3)


def test_an_image_the_filesystem_cannot_stage_goes_through_the_raw_repl_header_last():
    nano = boards.load("nano33ble")
    image = image_of(5 * 4096 + 100)
    board = ScriptedBoard(image, fs_free=2 * 4096)
    assert romfs.deploy(board, image, nano)
    assert board.staged == [] and board.puts == [4096, 8192, 12288, 16384, 20480, 0] and board.resets == 1


def test_a_chunk_reported_damaged_is_sent_again_and_then_given_up_on():
    nano = boards.load("nano33ble")
    image = image_of(3 * 4096)
    board = ScriptedBoard(image, fs_free=0, damaged_offset=8192, damaged_times=romfs.CHUNK_TRIES - 1)
    assert romfs.deploy(board, image, nano)
    assert board.puts == [4096, 8192, 0]
    board = ScriptedBoard(image, fs_free=0, damaged_offset=8192, damaged_times=romfs.CHUNK_TRIES)
    with pytest.raises(DeviceError, match="damaged"):
        romfs.deploy(board, image, nano)
    assert 0 not in board.puts             # the header never written: the board boots without /rom


def test_an_image_the_filesystem_can_stage_is_staged():
    esp32_romfs = boards.load("esp32-romfs")
    image = image_of(3 * 4096)
    board = ScriptedBoard(image, fs_free=64 * 4096)
    board.run_script = lambda code, timeout_s=None, fresh=False: (
        b"%d\r\n" % board.fs_free if "statvfs" in code
        else hashlib.sha256(image).hexdigest().encode() + b"\r\n" if "os.remove" in code else b"-\r\n")
    board.soft_reset = lambda: None
    assert romfs.deploy(board, image, esp32_romfs)
    assert board.staged == ["/romfs-deploy.img"] and board.puts == []
