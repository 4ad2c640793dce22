"""Finding the board a command talks to: ``--port``, ``--board`` detection by USB VID:PID, or a virtual board.

``--board sim`` (and ``--board NAME --virtual``) starts a virtual board for the command's duration.
"""

import contextlib
from dataclasses import dataclass

from . import boards
from .errors import BoardNotFound, UsageError


@dataclass(frozen=True)
class DetectedPort:
    device: str
    vid: int
    pid: int
    description: str
    boards: tuple          # names of the profiles that list this VID:PID


def detect_ports():
    """Serial ports with a USB VID:PID, each with the board profiles it may be."""
    from serial.tools import list_ports

    found = []
    for p in list_ports.comports():
        if p.vid is None:
            continue
        names = tuple(b.name for b in boards.match_usb(p.vid, p.pid))
        found.append(DetectedPort(p.device, p.vid, p.pid, p.description or "", names))
    return found


def find_port(board_name, detected=None):
    """The one serial port whose VID:PID matches ``board_name``'s profile, else a clear error."""
    detected = detect_ports() if detected is None else detected
    matches = [p for p in detected if board_name in p.boards]
    if len(matches) == 1:
        return matches[0].device
    listing = "; ".join(f"{p.device} ({p.vid:04X}:{p.pid:04X} {p.description})" for p in detected) or "none"
    if not matches:
        raise BoardNotFound(f"no serial port looks like a {board_name} board (ports with a USB id: {listing})")
    raise UsageError(f"{len(matches)} serial ports look like a {board_name} board: {listing}",
                     hint="choose one with --port PORT")


def find_board(detected=None):
    """``(port, profile name)`` of the one attached serial port that looks like a board tinyhost has a profile for
    (no ``--board``, no ``--port``); none or several is a clear error listing what was found."""
    detected = detect_ports() if detected is None else detected
    candidates = [p for p in detected if p.boards]
    if len(candidates) == 1:
        return candidates[0].device, candidates[0].boards[0]
    listing = "; ".join(f"{p.device} ({p.vid:04X}:{p.pid:04X} {p.description}"
                        + (f", looks like {' or '.join(p.boards)})" if p.boards else ", no known board)")
                        for p in detected) or "none"
    if not candidates:
        raise BoardNotFound(f"no board given and no serial port looks like a known board (ports with a USB id: "
                            f"{listing})")
    raise UsageError(f"no board given and {len(candidates)} serial ports look like boards: {listing}",
                     hint="choose one with --port PORT (and --board NAME for its profile)")


@dataclass
class Target:
    """What a command talks to: a port, the board profile, and the virtual board when there is one."""
    port: str
    board: boards.Board
    virtual_board: object = None      # tinyhost.sim.VirtualBoard, or None for a real board

    @property
    def virtual(self):
        return self.virtual_board is not None


@contextlib.contextmanager
def open_target(board_name=None, port=None, baud=None, virtual=False, state_dir=None):
    """Yield a :class:`Target`. Starts (and stops) a virtual board when ``board_name`` is ``sim`` or ``sim:NAME``
    (see :func:`tinyhost.boards.from_spec`), or ``virtual`` is set; ``state_dir`` is the root of the virtual boards'
    state folders (``--state-dir``; the board's own folder is under it, see :func:`tinyhost.sim.board_state_dir`).

    With ``port`` given, ``board_name`` only selects the profile (default: esp32 for a real port).
    """
    if board_name is None and port is None:
        raise UsageError("no board given", hint="pass --port PORT, --board NAME (e.g. esp32) or --board sim")
    profile, spec_virtual = boards.from_spec(board_name)
    virtual = virtual or spec_virtual
    if port is not None:
        if virtual:
            raise UsageError("--port and a virtual board both given", hint="drop --port, or drop --board sim")
        yield Target(port=port, board=profile)
        return
    if virtual:
        from .sim import VirtualBoard, board_state_dir

        emulated = boards.emulated(profile).name
        with VirtualBoard(board=emulated, state_dir=board_state_dir(emulated, state_dir), baud=baud) as vb:
            yield Target(port=vb.port, board=vb.board, virtual_board=vb)
        return
    yield Target(port=find_port(profile.name), board=profile)
