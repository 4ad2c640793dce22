"""One way to reach a board: :func:`connect` gives the :class:`Board` that every command receives.

    with board.connect("sim:esp32", state_dir=".sim") as b:     # or port="/dev/ttyUSB0", board_name="esp32"
        b.sync_firmware()                                        # firmware files that differ, nothing else
        model_info = b.load("models/kws/kws.tflite")            # model on the board, INFO, soft reset, LOAD
        result = b.dev.infer(data)

A :class:`Board` is the target (a port, its profile, the virtual board started for it) plus the open
:class:`~tinyhost.client.Device`, and the :class:`Provenance` that every result carries. Loading a model follows
one heap policy on every board: the board's INFO is taken first (its reply needs heap that a loaded model may
take), then a soft reset gives the model an unfragmented heap, then LOAD.
"""

import contextlib
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .hashing import sha256_file


@dataclass
class Provenance:
    """Where a result comes from: board, firmware, model, host. Every command's JSON carries one."""
    board: str                      # board profile name (esp32, nano33ble, ...) the figures are for
    virtual: bool                   # True: measured on the virtual board (host CPU), not on the board itself
    port: str = ""
    baud: int = 0
    dut: str = "tinyhost"           # tinyhost (binary protocol) or eembc (MLPerf Tiny text protocol)
    dut_name: str = ""              # EEMBC `name` answer, or the firmware name
    firmware_version: str = ""
    firmware_hash: str = ""
    micropython_version: str = ""
    machine: str = ""
    backend: str = ""
    model_path: str = ""
    model_sha256: str = ""
    model_bytes: int = 0
    benchmark: str = ""             # kws01/vww01/ic01/ad01 when known
    dataset_path: str = ""
    dataset_sha256: str = ""
    tinyhost_version: str = __version__
    date: str = ""                  # ISO 8601, UTC
    host: str = ""                  # host machine (python, platform) that ran the command
    files_flashed: list = field(default_factory=list)   # remote paths this command put on the board

    @property
    def label(self):
        return f"{self.board} (virtual board)" if self.virtual else self.board

    def record_model(self, path):
        path = Path(path)
        self.model_path, self.model_sha256, self.model_bytes = str(path), sha256_file(path), path.stat().st_size

    def record_info(self, info):
        """The board's own report (a :class:`~tinyhost.client.DeviceInfo`): firmware, MicroPython, and whether
        the firmware runs on the virtual board (it then names the profile it stands in for)."""
        self.firmware_version = str(info.firmware_version or "")
        self.firmware_hash = str(info.firmware_hash or "")
        self.micropython_version = str(info.micropython_version or "")
        self.machine = str(info.machine or "")
        if info.virtual:
            self.virtual = True
            self.board = info.emulates or self.board


class Board:
    """A connected board (real or virtual): its target, the open Device, and the provenance of what it runs.

    Made by :func:`connect`; ``dev`` is the :class:`~tinyhost.client.Device` for operations this layer does not
    wrap (set_input, invoke, files)."""

    def __init__(self, target, baud=None, timeout_s=5.0):
        self.target = target
        self.profile = target.board
        self.port = target.port
        self.baud = baud or target.board.baud
        self.timeout_s = timeout_s
        self.dev = None
        self.board_info = None         # the board's INFO taken by the last load(), before the model took the heap
        self.model_info = None         # the last load()'s ModelInfo
        self._models_put = set()       # models this Board put (or found) on the board: not checked again
        self.provenance = Provenance(
            board=target.board.name, virtual=target.virtual, port=target.port, baud=self.baud,
            date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            host=f"{platform.node()} {platform.machine()} Python {platform.python_version()}")

    @property
    def virtual(self):
        return self.target.virtual

    # -- the connection ----------------------------------------------------------------------------------------

    def open(self):
        """Open the Device (the runtime is started whatever state the board is in)."""
        from .client import Device

        if self.dev is None:
            self.dev = Device.open(self.port, baud=self.baud, timeout_s=self.timeout_s)
        return self.dev

    def reopen(self):
        """A new connection, after the board reset or the link broke (the old one is dropped, whatever its state)."""
        with contextlib.suppress(Exception):       # a connection that broke is gone anyway
            self.close()
        self.dev = None
        self.model_info = None                     # whether the board still holds it is unknown
        return self.open()

    def close(self, leave_running=False):
        """Stop the runtime (unless ``leave_running``) and close the port; the board stays as it is."""
        dev, self.dev = self.dev, None
        if dev is not None:
            dev.close(leave_running=leave_running)

    # -- what is on the board ----------------------------------------------------------------------------------

    def info(self):
        """The board's INFO, recorded in the provenance."""
        info = self.open().info()
        self.provenance.record_info(info)
        return info

    def check_fits(self, model_path):
        """DoesNotFit, naming the boards where it does fit, when ``tinyhost model inspect`` finds that the model
        does not fit this board: checked before a byte is sent."""
        from .model import require_fit

        return require_fit(model_path, self.profile, self.virtual)

    def flash(self, model_paths=(), force=False, progress=None):
        """The firmware files and ``model_paths`` onto the board, only those that differ (``force``: all).
        Returns ``(firmware report, models report)``: on a board with a ROMFS partition the models go into it with
        the firmware package (:func:`tinyhost.flash.put_models`), elsewhere under /models with the firmware files."""
        from . import flash

        for path in model_paths:
            self.check_fits(path)
        dev = self.open()
        items = flash.firmware_items(board=self.profile)
        in_romfs = bool(self.profile.romfs_bytes)
        if not in_romfs:
            items += [flash.model_item(p, self.profile) for p in model_paths]
        report = flash.flash_items(dev, items, self.profile, force=force, progress=progress)
        rom = flash.put_models(dev, model_paths, self.profile, progress=progress, force=force) if in_romfs else None
        self._record(list(report.sent) + list(rom.sent if rom else ()), model_paths)
        return report, rom

    def sync_firmware(self, progress=None):
        """The firmware files that differ from the board's copies; returns the FlashReport."""
        report, _ = self.flash(progress=progress)
        return report

    def put_models(self, model_paths, progress=None):
        """Models and their load plans, only those that differ (:func:`tinyhost.flash.put_models`)."""
        from . import flash

        paths = [Path(p).resolve() for p in model_paths]
        report = flash.put_models(self.open(), paths, self.profile, progress=progress)
        self._record(report.sent, paths)
        return report

    def _record(self, sent, model_paths):
        """What a flash or model upload left on the board: its files in the provenance, its models as put."""
        self.provenance.files_flashed += list(sent)
        if self.profile.romfs_bytes:               # the partition now holds exactly these models
            self._models_put.clear()
        self._models_put.update(Path(p).resolve() for p in model_paths)
        if self.virtual and model_paths:           # the virtual board's clock: board time for these models
            from .flash import write_board_times

            write_board_times(self.dev, model_paths, self.profile)

    def load(self, model_path, backend="auto", progress=None, timeout_s=120.0, keep_free_bytes=0):
        """Put ``model_path`` on the board if it differs, then INFO, soft reset, LOAD (leaving ``keep_free_bytes`` of
        heap for what comes after the model: a stream); returns the ModelInfo.

        The board's INFO is kept in ``board_info``: on a 100 KB board its reply may not fit beside a loaded model.
        The soft reset gives the model an unfragmented heap."""
        from . import flash

        model_path = Path(model_path)
        self.check_fits(model_path)
        if self.model_info is not None:           # this Board's last model gives its heap back first
            self.dev.unload_model()
            self.model_info = None
        if model_path.resolve() not in self._models_put:
            self.put_models([model_path], progress=progress)
        self.provenance.record_model(model_path)
        self.board_info = self.info()
        self.dev.soft_reset()
        self.model_info = self.dev.load_model(flash.model_remote_path(model_path, self.profile), backend=backend,
                                              timeout_s=timeout_s, keep_free_bytes=keep_free_bytes)
        self.provenance.backend = str(self.model_info.backend or "")
        return self.model_info

    def infer(self, data, timeout_s=120.0):
        return self.dev.infer(data, timeout_s=timeout_s)


@contextlib.contextmanager
def connect(board_name=None, port=None, baud=None, state_dir=None, timeout_s=5.0, open_device=True):
    """Yield a :class:`Board`: ``port`` (``board_name`` then only picks the profile), a board found by its USB
    VID:PID (``board_name`` = esp32, nano33ble, ...), or a virtual board started for the block (``sim``,
    ``sim:NAME``). The Device is opened unless ``open_device`` is False (a DUT that speaks another protocol, such
    as the EEMBC runner's text protocol, opens the port itself); it is closed, and a virtual board stopped, on exit."""
    from .ports import open_target

    with open_target(board_name, port, baud, state_dir=state_dir) as target:
        b = Board(target, baud=baud, timeout_s=timeout_s)
        try:
            if open_device:
                b.open()
            yield b
        finally:
            b.close()
