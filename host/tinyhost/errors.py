"""One error hierarchy for the whole host tool.

Callers catch classes, never match message text. Every error carries a ``hint``: what the user can do about it.
The CLI's top-level handler prints ``tinyhost: <message> — <hint>`` and exits with the class's ``exit_code``
(documented in docs/cli.md).
"""


class TinyhostError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1
    default_hint = ""

    def __init__(self, message, hint=None):
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self):
        return f"{self.message} — {self.hint}" if self.hint else self.message


class UsageError(TinyhostError):
    """Bad arguments or configuration the user can fix on the command line."""

    exit_code = 2


class BoardProfileError(TinyhostError):
    """A board profile file is malformed (unknown field, bad value, missing parent)."""

    exit_code = 3


class BoardNotFound(TinyhostError):
    """No port given and no serial port matched the board's USB VID:PID."""

    exit_code = 4
    default_hint = "plug the board in, pass --port PORT, or use --board sim for the virtual board"


class TransportError(TinyhostError):
    """The serial port (or socket) could not be opened or broke while in use."""

    exit_code = 5


class PortBusy(TransportError):
    """Another program holds the port open."""

    exit_code = 6
    default_hint = "close the other program using the port (a serial monitor, mpremote, another tinyhost)"


class BoardNotResponding(TransportError):
    """The port opened but nothing answered in time."""

    exit_code = 7
    default_hint = ("check the cable and the baud rate, press the board's reset button, "
                    "or reflash MicroPython with `tinyhost flash --firmware IMAGE`")


class ProtocolError(TinyhostError):
    """Frames could not be exchanged: bad CRC, wrong sequence, retries exhausted."""

    exit_code = 8
    default_hint = "check the cable; lower --baud; if it persists, reset the board and retry"


class DeviceError(TinyhostError):
    """The firmware answered with an error."""

    exit_code = 9


class ModelError(TinyhostError):
    """A model is corrupt, unsupported, or cannot run on the chosen board."""

    exit_code = 10


class DoesNotFit(TinyhostError):
    """A file or model does not fit the board's filesystem or RAM."""

    exit_code = 11


class ModelDownloadError(TinyhostError):
    """A model could not be fetched (network, mirror, local folder), or arrived incomplete (nothing is kept under
    its real name)."""

    exit_code = 14
    default_hint = "check the network or pass --from DIR|URL with a local copy or mirror, then retry"


class ChecksumMismatch(ModelDownloadError):
    """A fetched model's SHA-256 is not the published one (the file is refused and removed)."""

    default_hint = "the source is corrupt or not the official file; retry, or use --from with a good copy"


class VerifyMismatch(TinyhostError):
    """``tinyhost verify``: the board's outputs are not bit-exact with TensorFlow Lite Micro's."""

    exit_code = 12
    default_hint = "report it with the --json file; try another --backend to find the kernel at fault"


class BenchInterrupted(TinyhostError):
    """A benchmark's accuracy run stopped part-way (the board failed); its journal keeps every finished sample."""

    exit_code = 13
    default_hint = "run the same command with --resume to continue"


class Interrupted(TinyhostError):
    """Ctrl-C: the command stopped at the user's request."""

    exit_code = 130
