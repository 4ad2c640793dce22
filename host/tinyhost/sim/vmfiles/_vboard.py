# The virtual board's boot code, run by MicroPython's unix VM; stays in sys.modules as `_vboard`.
#
# It mounts the board's flash (a littlefs2 image file on the host) at "/" in place of the host filesystem, so the
# board sees only its own files, like an ESP32; then runs boot.py, and main.py after a reset into the friendly
# REPL, as MicroPython does on a board. The relay (tinyhost.sim.relay) passes the settings on the command line.
#
# A board whose profile has a ROMFS partition gets it as MicroPython >= 1.25 firmware built with one does: the
# partition, mapped read-only into memory by the launcher (tinyhost.sim.vm), is mounted at /rom when it holds a
# ROMFS image, and `vfs` has rom_ioctl, whose segment (a block device) erases and writes it (_vrom; `mpremote
# romfs deploy`, `tinyhost flash`).
import builtins
import gc
import micropython
import os
import sys
import vfs

board = ""
heap_bytes = 0
fs_bytes = 0
baud = 0
virtual = True
unique_id = b""     # what machine.unique_id() is on a chip: a stable id derived from the board's flash image path

# In-band notes to the relay, which removes them from the output (see tinyhost.sim.relay).
_NOTE_MOUNTED = "\x1b]tinyhost-sim:mounted\x07"     # flash at /, Ctrl-C can interrupt from here on
_NOTE_READY = "\x1b]tinyhost-sim:ready\x07"         # boot.py has run
_BLOCK_DEVICE_IOCTL_COUNT = 4
_BLOCK_DEVICE_IOCTL_SIZE = 5


class _FlashImage:
    # Block device over the host file holding the flash image (MicroPython's extended block protocol).

    def __init__(self, path, block_bytes, block_count):
        self._file = open(path, "r+b")
        self._block_bytes = block_bytes
        self._block_count = block_count

    def readblocks(self, block, buf, offset=0):
        self._file.seek(block * self._block_bytes + offset)
        self._file.readinto(buf)

    def writeblocks(self, block, buf, offset=0):
        if offset is None:
            offset = 0
        self._file.seek(block * self._block_bytes + offset)
        self._file.write(buf)     # unbuffered: in the host's page cache at once (no fsync, that's 100x slower)

    def ioctl(self, op, arg):
        if op == _BLOCK_DEVICE_IOCTL_COUNT:
            return self._block_count
        if op == _BLOCK_DEVICE_IOCTL_SIZE:
            return self._block_bytes
        return 0        # init, deinit, sync, erase: nothing to do for a file


def _mount(image_path, block_bytes, block_count):
    flash = _FlashImage(image_path, block_bytes, block_count)
    vfs.umount("/")
    try:
        vfs.mount(vfs.VfsLfs2(flash), "/")
        fresh = False
    except OSError:
        # First start (or a damaged image): format, as MicroPython does on a board whose filesystem won't mount.
        vfs.VfsLfs2.mkfs(flash)
        vfs.mount(vfs.VfsLfs2(flash), "/")
        fresh = True
    os.chdir("/")
    if fresh:
        with open("boot.py", "w") as f:
            f.write("# boot.py: runs at every reset of this (virtual) board, before main.py\n")


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _run(path):
    # Like pyexec_file on a board: errors are printed and booting goes on; SystemExit means a soft reset.
    import __main__
    try:
        builtins.execfile(path, __main__.__dict__)      # compiles from the file, as a board does
    except SystemExit:
        # The relay restarts the VM when it ends and shows the soft reboot, as a board resets here.
        os.system("kill -KILL $PPID")
    except BaseException as e:  # noqa: B036 (a board prints every error from boot.py/main.py and carries on)
        sys.print_exception(e)
    gc.collect()


def _boot():
    global board, heap_bytes, fs_bytes, baud, unique_id
    import binascii
    image_path, block_bytes, block_count, board, heap_bytes, fs_bytes, baud, mode = sys.argv[1:9]
    rom_path, rom_address, rom_bytes, unique_hex = sys.argv[9:13]
    unique_id = binascii.unhexlify(unique_hex)
    micropython.kbd_intr(-1)        # Ctrl-C while mounting arrives as data; boot.py and main.py can be interrupted
    block_bytes, block_count = int(block_bytes), int(block_count)
    heap_bytes, fs_bytes, baud = int(heap_bytes), int(fs_bytes), int(baud)
    rom = False
    if int(rom_bytes):
        import _vrom
        rom = _vrom.setup(rom_path, int(rom_address), int(rom_bytes), block_bytes)
        del _vrom
    _mount(image_path, block_bytes, block_count)
    rom = rom and rom()
    # MicroPython puts /rom and /rom/lib on the path when it mounts a ROMFS at start-up
    sys.path[:] = ["", ".frozen"] + (["/rom", "/rom/lib"] if rom else []) + ["/lib"]
    sys.argv[:] = []
    gc.collect()
    micropython.kbd_intr(3)
    ready = False
    try:
        sys.stdout.write(_NOTE_MOUNTED)
        if _exists("boot.py"):
            _run("boot.py")
        sys.stdout.write(_NOTE_READY)
        ready = True
    except KeyboardInterrupt:   # Ctrl-C that came while booting (bytes a host was still sending): on a board it
        pass                    # stops boot.py at most; the board still comes up
    if not ready:
        sys.stdout.write(_NOTE_READY)
    return mode == "friendly" and _exists("main.py")


def _boot_done():
    # The boot code leaves the heap, as a board's is C code in flash (the runtime's models need the room).
    global _boot, _mount, _boot_done
    del _boot, _mount, _boot_done
    gc.collect()
