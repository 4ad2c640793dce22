# The `vfs` module of a virtual board with a ROMFS partition: the VM's own vfs plus rom_ioctl, as MicroPython
# >= 1.25 firmware built with a ROMFS partition has it. _vboard calls setup() at boot, which puts this module in
# sys.modules as "vfs" and mounts the partition at /rom when it holds a ROMFS image. Kept small: on a board
# rom_ioctl is C code in flash, here its bytecode is in the board's heap.
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


def rom_ioctl(op, *args):
    """Partition 0: 1 count, 2 its bytes in place, 3 erase (id, len) or (id, offset, len), 4 write (id, offset,
    data), 5 done (the next reset mounts the new image), 6 erase block size; errors are negative errno values."""
    n = len(_mem)
    if op == 1:
        return 1
    if not args or args[0] != 0:
        return -errno.ENOENT
    if op == 2:
        return memoryview(_mem)
    if op == 3 or op == 4:
        offset = 0 if op == 3 and len(args) == 2 else args[1]
        data = args[2] if op == 4 else None
        length = len(data) if op == 4 else args[-1]
        if offset < 0 or offset + length > n:
            return -errno.EINVAL
        _file.seek(offset)
        if op == 4:
            _file.write(data)
            return 0
        while length > 0:
            _file.write(b"\xff" * min(length, _block))
            length -= _block
        return 4                   # smallest write: an ESP32's flash writes 32-bit words
    if op == 5:
        return 0
    if op == 6:
        return _block
    return -errno.EINVAL
