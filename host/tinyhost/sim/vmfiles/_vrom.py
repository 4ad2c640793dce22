# The `vfs` module of a virtual board with a ROMFS partition: the VM's own vfs plus rom_ioctl, as MicroPython
# >= 1.25 firmware built with a ROMFS partition has it. _vboard calls setup() at boot, which puts this module in
# sys.modules as "vfs" and mounts the partition at /rom when it holds a ROMFS image. Kept small: on a board
# rom_ioctl is C code in flash, here its bytecode is in the board's heap.
#
# As on the esp32 and nrf ports (MicroPython v1.28.0: ports/esp32/esp32_partition.c, ports/nrf/modules/nrf/
# flashbdev.c), rom_ioctl answers only "how many segments" (1) and "segment 0" (2); the segment is the partition's
# flash block device (esp32.Partition, nrf.Flash): its bytes in place (buffer protocol) with writeblocks (erasing
# the block first unless given an offset) and ioctl (4 block count, 5 block size, 6 erase), which is how `mpremote
# romfs deploy` and tinyhost write it.
import errno
import sys
from vfs import *  # noqa: F403 (mount, umount, VfsRom, VfsLfs2, ...)

_file = None        # the partition's image file, opened before the host filesystem is unmounted
_mem = b""          # the partition, mapped read-only by the launcher (tinyhost.sim.vm)
_block = 4096       # erase block size


def setup(path, address, nbytes, block):
    """Open the partition (call while the host filesystem is still at /); returns mount(), to call later."""
    global _file, _mem, _block
    import uctypes
    _file = open(path, "r+b")
    _mem = uctypes.bytearray_at(address, nbytes)
    _block = block
    me = sys.modules["vfs"] = sys.modules.pop("_vrom")
    del me.setup                   # its code leaves the heap
    return _mount


def _mount():
    me = sys.modules["vfs"]
    del me._mount
    if bytes(_mem[:3]) != b"\xd2\xcd\x31":
        return False
    try:
        mount(VfsRom(memoryview(_mem)), "/rom")  # noqa: F405
        return True
    except OSError as e:           # a damaged image: the board boots without /rom, as a board does
        sys.print_exception(e)
        return False


class _Segment(memoryview):
    # readblocks is left out (bytecode in the heap): the partition's bytes are read in place
    def writeblocks(self, block, buf, offset=None):
        if offset is None:
            self.ioctl(6, block)
            offset = 0
        _file.seek(block * _block + offset)
        _file.write(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return len(self) // _block
        if op == 5:
            return _block
        if op == 6:
            _file.seek(arg * _block)
            _file.write(b"\xff" * _block)
        return 0                   # 1 init, 2 deinit, 3 sync, 6 erase done


def rom_ioctl(op, *args):
    """1: the number of segments, 2: segment 0 (a _Segment); anything else -EINVAL, as on the esp32 and nrf
    ports."""
    if op == 1:
        return 1
    if op == 2 and args and args[0] == 0:
        return _Segment(_mem)
    return -errno.EINVAL
