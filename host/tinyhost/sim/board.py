"""VirtualBoard: start, supervise and stop a virtual board from Python (tests, ``--board sim``).

The board runs in its own process (``python -m tinyhost.sim --control``, see :mod:`tinyhost.sim.relay`) so that its
line timing does not depend on the caller's GIL. That process and the VM it starts end when :meth:`VirtualBoard.stop`
is called, when the VirtualBoard is garbage-collected or the interpreter exits, and when the owner dies (the relay
sees its control pipe close; the VM has PR_SET_PDEATHSIG).
"""

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

from ..errors import BoardNotResponding, TransportError, UsageError
from .relay import make_config

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0   # generous: a first boot formats the flash image, on a machine that may be busy
CONTROL_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
LOG_NAME = "sim.log"
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])     # the directory holding the tinyhost package


def _kill_group(process):
    """Finalizer: end the relay and everything in its process group, whatever state it is in."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


class VirtualBoard:
    """A virtual board emulating the board profile ``board`` (its heap, flash size and default baud).

    ``state_dir`` is this board's own folder, holding its flash image (default: the board's folder under the state
    root, :func:`tinyhost.sim.state.board_state_dir`; ``--state-dir`` names that root); ``baud`` the emulated line
    rate (default the profile's); ``drop_rate``/``corrupt_rate`` per-byte fault probabilities in both directions,
    reproducible with ``seed``. ``fresh=True`` erases the flash first."""

    def __init__(self, board="esp32", state_dir=None, baud=None, drop_rate=0.0, corrupt_rate=0.0, seed=None,
                 fresh=False):
        self._config = make_config(board, baud, state_dir, drop_rate, corrupt_rate, seed, fresh, control=True)
        self.board = self._config.board
        self.baud = self._config.baud
        self.state_dir = self._config.state_dir
        self.flash_image = self.state_dir / "flash.img"
        self.port = None
        self._process = None
        self._stdout_buf = b""
        self._finalizer = None

    # -- life cycle -------------------------------------------------------------------------------------------------

    def start(self):
        """Start the board; returns its port path once it has booted (boot.py run, friendly REPL next)."""
        if self._process is not None:
            return self.port
        c = self._config
        args = [sys.executable, "-m", "tinyhost.sim", "--control", "--board", c.board.name, "--baud", str(c.baud),
                "--state-dir", str(c.state_dir), "--drop-rate", repr(c.drop_rate),
                "--corrupt-rate", repr(c.corrupt_rate)]
        if c.seed is not None:
            args += ["--seed", str(c.seed)]
        if c.fresh:
            args.append("--fresh")
        if log.isEnabledFor(logging.INFO):
            args.append("--verbose")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        try:
            c.state_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(c.state_dir / LOG_NAME, "wb")
        except OSError as e:
            raise UsageError(f"cannot use {c.state_dir} as the virtual board's state directory: {e.strerror}",
                             hint="pass a writable state_dir / --state-dir") from None
        with log_file:
            self._process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                                             env=env, start_new_session=True)
        self._finalizer = weakref.finalize(self, _kill_group, self._process)
        try:
            self.port = self._read_line(START_TIMEOUT_S)
            self._read_line(START_TIMEOUT_S)        # the description line, printed once the board has booted
        except BaseException:
            self.stop()
            raise
        self._config.fresh = False                  # a restart of this object keeps the flash
        log.info("virtual %s on %s", self.board.name, self.port)
        return self.port

    def stop(self):
        """Stop the board and everything it started; safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(OSError):
                process.stdin.write(b"quit\n")
                process.stdin.flush()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("virtual board did not stop in %s s; killing it", STOP_TIMEOUT_S)
        self._finalizer()       # kills what is left of the process group, closes the pipes
        self._stdout_buf = b""

    @property
    def running(self):
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self):
        """Process id of the relay (the VM is its child), or None."""
        return self._process.pid if self._process is not None else None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- run-time control ---------------------------------------------------------------------------------------------

    def set_faults(self, drop_rate=0.0, corrupt_rate=0.0):
        """Change fault injection (per-byte probabilities, both directions); effective when this returns.
        The fault sequence restarts from the board's seed, so the same calls give the same damage."""
        for option, rate in (("drop_rate", drop_rate), ("corrupt_rate", corrupt_rate)):
            if not 0.0 <= rate <= 1.0:
                raise UsageError(f"{option} must be between 0 and 1, got {rate}")
        self._command(f"faults {float(drop_rate)!r} {float(corrupt_rate)!r}")
        self._config.drop_rate, self._config.corrupt_rate = drop_rate, corrupt_rate

    def _command(self, text):
        if not self.running:
            raise TransportError("the virtual board is not running", hint="call start() first")
        try:
            self._process.stdin.write(text.encode() + b"\n")
            self._process.stdin.flush()
        except OSError as e:
            raise TransportError(f"the virtual board's control channel broke: {e}") from None
        reply = self._read_line(CONTROL_TIMEOUT_S)
        if reply != "ok":
            raise TransportError(f"the virtual board refused {text!r}: {reply}")

    def _read_line(self, timeout_s):
        deadline = time.monotonic() + timeout_s
        fd = self._process.stdout.fileno()
        while b"\n" not in self._stdout_buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BoardNotResponding(f"the virtual board did not answer within {timeout_s:g} s",
                                         hint=f"see {self.state_dir / LOG_NAME}; the machine may be overloaded")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                self._process.wait()
                raise self._failure()
            self._stdout_buf += chunk
        line, self._stdout_buf = self._stdout_buf.split(b"\n", 1)
        return line.decode(errors="replace").strip()

    def _failure(self):
        try:
            tail = (self.state_dir / LOG_NAME).read_text(errors="replace").strip().splitlines()[-3:]
        except OSError:
            tail = []
        detail = "; ".join(tail) or f"exit code {self._process.returncode}"
        if self._process.returncode == UsageError.exit_code:
            return UsageError(f"the virtual board could not start: {detail}")
        return TransportError(f"the virtual board stopped unexpectedly: {detail}",
                              hint=f"see {self.state_dir / LOG_NAME}")


@contextlib.contextmanager
def board_port(board_name="sim", **options):
    """``with board_port("sim") as port:`` -- a virtual board for the duration of a command (``--board sim``).

    ``board_name`` is "sim" or any profile name; options as for :class:`VirtualBoard`."""
    with VirtualBoard(board=board_name, **options) as vb:
        yield vb.port
