"""Board profiles: one TOML file per board under ``boards/``, data not code.

A variant names its parent with ``extends = "esp32"`` and overrides only what differs. Profiles are validated on
load: an unknown field, a missing one or a bad value is a :class:`BoardProfileError` naming the file and field.
"""

from dataclasses import dataclass, field
from pathlib import Path

from .errors import BoardProfileError, UsageError
from .paths import boards_dir

try:
    import tomllib
except ModuleNotFoundError:        # Python 3.10: the same parser, as the package it was taken from
    import tomli as tomllib

RADIOS = ("wifi", "ble")
FLASH_METHODS = ("esptool", "bossac", "sim")
POWER_STATES = ("active", "idle", "radio_tx", "radio_rx")


@dataclass(frozen=True)
class PowerFigure:
    current_ma: float
    source: str


@dataclass(frozen=True)
class Microphone:
    """The board's microphone (``[mic]``): an I2S one (``machine.I2S`` peripheral ``i2s_id`` on pins sck/ws/sd,
    ``bits`` a sample slot) or a PDM one, which stock MicroPython cannot read (``tinyhost listen --mic`` says so)."""
    kind: str
    source: str
    i2s_id: int = 0
    sck: int = -1
    ws: int = -1
    sd: int = -1
    bits: int = 16
    note: str = ""


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    mcu: str
    clock_mhz: int
    heap_bytes: int
    heap_source: str
    fs_bytes: int
    fs_block_bytes: int
    fs_source: str
    usb_ids: tuple           # ("10C4:EA60", ...), upper-case hex
    baud: int
    radios: tuple
    supply_v: float
    flash_method: str
    power: dict              # state -> PowerFigure
    virtual: bool = False
    esptool_chip: str = ""
    firmware_offset: int = 0
    romfs_bytes: int = 0     # a ROMFS partition (MicroPython >= 1.25, memory-mapped, read-only), 0: none
    romfs_source: str = ""
    board_time: dict = field(default_factory=dict)   # coefficient -> boardtime.Coefficient ([board_time])
    board_time_core: str = ""        # the core the coefficients are for
    board_time_clock_mhz: int = 0    # the clock the firmware runs the core at (the estimate's clock)
    board_time_clock_source: str = ""
    mic: Microphone = None           # [mic]: None when the profile names none
    path: Path = field(default=None, compare=False)

    def power_mw(self, state):
        """Power in mW drawn in ``state`` (one of POWER_STATES), from the profile's current and supply voltage."""
        return self.power[state].current_ma * self.supply_v


# field -> (type, required); types are checked exactly (bool is not an int here).
_FIELDS = {
    "name": (str, True), "extends": (str, False), "description": (str, True), "mcu": (str, True),
    "clock_mhz": (int, True), "heap_bytes": (int, True), "heap_source": (str, True),
    "fs_bytes": (int, True), "fs_block_bytes": (int, True), "fs_source": (str, True),
    "usb_ids": (list, True), "baud": (int, True), "radios": (list, True), "supply_v": ((int, float), True),
    "flash_method": (str, True), "power": (dict, True), "virtual": (bool, False),
    "esptool_chip": (str, False), "firmware_offset": (int, False),
    "romfs_bytes": (int, False), "romfs_source": (str, False), "board_time": (dict, False),
    "mic": (dict, False),
}
MIC_KINDS = ("i2s", "pdm")
_MIC_PINS = ("sck", "ws", "sd")


def _fail(path, field_name, why):
    raise BoardProfileError(f"board profile {path}: field '{field_name}' {why}",
                            hint="fix the profile file (see docs/boards.md for the fields)")


def _read(path):
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise BoardProfileError(f"board profile {path} is not valid TOML: {e}",
                                hint="fix the syntax error at the position shown") from None


def _merge(parent, child):
    merged = dict(parent)
    for key, value in child.items():
        if key in ("power", "board_time") and isinstance(value, dict):
            table = dict(parent.get(key, {}))
            table.update(value)
            merged[key] = table
        else:
            merged[key] = value
    return merged


def _resolve(name, directory, seen=()):
    path = directory / f"{name}.toml"
    if not path.is_file():
        return None, path
    raw = _read(path)
    for key in raw:
        if key not in _FIELDS:
            _fail(path, key, f"is unknown (known fields: {', '.join(sorted(_FIELDS))})")
    if raw.get("name") != name:
        _fail(path, "name", f"is {raw.get('name')!r} but the file is named {name}.toml")
    parent_name = raw.get("extends")
    if parent_name is None:
        return raw, path
    if parent_name in seen + (name,):
        _fail(path, "extends", f"makes a cycle: {' -> '.join(seen + (name, parent_name))}")
    parent, parent_path = _resolve(parent_name, directory, seen + (name,))
    if parent is None:
        _fail(path, "extends", f"names {parent_name!r} but {parent_path} does not exist")
    parent = {k: v for k, v in parent.items() if k != "virtual"}   # a virtual board's variants say so themselves
    return _merge(parent, raw), path


def _validate(raw, path):
    for key, (kind, required) in _FIELDS.items():
        if key not in raw:
            if required:
                _fail(path, key, "is missing")
            continue
        value = raw[key]
        if isinstance(value, bool) and kind is not bool:
            _fail(path, key, f"must be {kind}, not a boolean")
        if not isinstance(value, kind):
            _fail(path, key, f"must be of type {getattr(kind, '__name__', 'number')}, got {value!r}")
    for key in ("clock_mhz", "heap_bytes", "fs_bytes", "fs_block_bytes", "baud"):
        if raw[key] <= 0:
            _fail(path, key, f"must be positive, got {raw[key]}")
    romfs_bytes = raw.get("romfs_bytes", 0)
    if romfs_bytes < 0 or romfs_bytes % raw["fs_block_bytes"]:
        _fail(path, "romfs_bytes", f"must be a non-negative multiple of fs_block_bytes, got {romfs_bytes}")
    if romfs_bytes and not raw.get("romfs_source", "").strip():
        _fail(path, "romfs_source", "must say where the ROMFS partition comes from")
    if raw["supply_v"] <= 0:
        _fail(path, "supply_v", f"must be positive, got {raw['supply_v']}")
    usb_ids = []
    for vid_pid in raw["usb_ids"]:
        parts = vid_pid.split(":") if isinstance(vid_pid, str) else []
        if len(parts) != 2 or not all(len(p) == 4 for p in parts):
            _fail(path, "usb_ids", f"entry {vid_pid!r} is not VID:PID in hex (e.g. '10C4:EA60')")
        try:
            int(parts[0], 16), int(parts[1], 16)
        except ValueError:
            _fail(path, "usb_ids", f"entry {vid_pid!r} is not VID:PID in hex (e.g. '10C4:EA60')")
        usb_ids.append(vid_pid.upper())
    for radio in raw["radios"]:
        if radio not in RADIOS:
            _fail(path, "radios", f"entry {radio!r} is not one of {', '.join(RADIOS)} (use [] for none)")
    if raw["flash_method"] not in FLASH_METHODS:
        _fail(path, "flash_method", f"is {raw['flash_method']!r}, not one of {', '.join(FLASH_METHODS)}")
    if raw["flash_method"] == "esptool" and not raw.get("esptool_chip"):
        _fail(path, "esptool_chip", "is required when flash_method is 'esptool'")
    power = {}
    for state, figure in raw["power"].items():
        where = f"power.{state}"
        if state not in POWER_STATES:
            _fail(path, where, f"is unknown (known: {', '.join(POWER_STATES)})")
        if not isinstance(figure, dict) or set(figure) != {"current_ma", "source"}:
            _fail(path, where, "must have exactly 'current_ma' and 'source'")
        current = figure["current_ma"]
        if isinstance(current, bool) or not isinstance(current, (int, float)) or current < 0:
            _fail(path, f"{where}.current_ma", f"must be a non-negative number, got {current!r}")
        if not isinstance(figure["source"], str) or not figure["source"].strip():
            _fail(path, f"{where}.source", "must say where the figure comes from")
        power[state] = PowerFigure(float(current), figure["source"])
    missing = [s for s in POWER_STATES if s not in power]
    if missing:
        _fail(path, "power", f"lacks {', '.join(missing)}")
    coefficients, core, clock = _board_time(raw.get("board_time"), path, required=not raw.get("virtual", False))
    return Board(
        name=raw["name"], description=raw["description"], mcu=raw["mcu"], clock_mhz=raw["clock_mhz"],
        heap_bytes=raw["heap_bytes"], heap_source=raw["heap_source"], fs_bytes=raw["fs_bytes"],
        fs_block_bytes=raw["fs_block_bytes"], fs_source=raw["fs_source"], usb_ids=tuple(usb_ids),
        baud=raw["baud"], radios=tuple(raw["radios"]), supply_v=float(raw["supply_v"]),
        flash_method=raw["flash_method"], power=power, virtual=raw.get("virtual", False),
        esptool_chip=raw.get("esptool_chip", ""), firmware_offset=raw.get("firmware_offset", 0),
        romfs_bytes=romfs_bytes, romfs_source=raw.get("romfs_source", ""),
        board_time=coefficients, board_time_core=core, board_time_clock_mhz=clock[0],
        board_time_clock_source=clock[1], mic=_mic(raw.get("mic"), path), path=path)


def _mic(table, path):
    """The ``[mic]`` table: kind (i2s or pdm), source; for i2s the peripheral, its pins and the sample slot."""
    if table is None:
        return None
    kind = table.get("kind")
    if kind not in MIC_KINDS:
        _fail(path, "mic.kind", f"is {kind!r}, not one of {', '.join(MIC_KINDS)}")
    if not isinstance(table.get("source"), str) or not table["source"].strip():
        _fail(path, "mic.source", "must say where the wiring comes from")
    known = {"kind", "source", "note", "i2s_id", "bits", *_MIC_PINS}
    for key in table:
        if key not in known:
            _fail(path, f"mic.{key}", f"is unknown (known: {', '.join(sorted(known))})")
    if kind == "pdm":
        return Microphone("pdm", table["source"], note=str(table.get("note", "")))
    for key in ("i2s_id", *_MIC_PINS):
        value = table.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            _fail(path, f"mic.{key}", f"must be a non-negative integer, got {value!r}")
    if table.get("bits", 16) not in (16, 32):
        _fail(path, "mic.bits", f"must be 16 or 32, got {table.get('bits')!r}")
    return Microphone("i2s", table["source"], table["i2s_id"], table["sck"], table["ws"], table["sd"],
                      table.get("bits", 16), str(table.get("note", "")))


def _board_time(table, path, required):
    """The ``[board_time]`` table: ``core``, ``clock_mhz`` (the clock the firmware runs the core at) with
    ``clock_source``, and every coefficient of tinyhost.boardtime as ``{cycles, source}``. Every real board needs
    all of them; a virtual board inherits its parent's. Returns ``(coefficients, core, (clock_mhz, source))``."""
    from .boardtime import COEFFICIENTS, Coefficient, centicycles

    if table is None:
        if required:
            _fail(path, "board_time", "is missing (every real board gives its board-time coefficients)")
        return {}, "", (0, "")
    own = ("core", "clock_mhz", "clock_source")
    for key in table:
        if key not in own and key not in COEFFICIENTS:
            _fail(path, f"board_time.{key}", f"is unknown (known: {', '.join(own + tuple(COEFFICIENTS))})")
    core = table.get("core")
    if not isinstance(core, str) or not core.strip():
        _fail(path, "board_time.core", "must name the core the coefficients are for")
    clock = table.get("clock_mhz")
    if isinstance(clock, bool) or not isinstance(clock, int) or clock <= 0:
        _fail(path, "board_time.clock_mhz", f"must be the firmware's CPU clock in MHz (a positive int), got {clock!r}")
    clock_source = table.get("clock_source")
    if not isinstance(clock_source, str) or not clock_source.strip():
        _fail(path, "board_time.clock_source", "must say where the firmware's clock comes from")
    coefficients = {}
    for name in COEFFICIENTS:
        where = f"board_time.{name}"
        entry = table.get(name)
        if entry is None:
            _fail(path, where, "is missing")
        if not isinstance(entry, dict) or set(entry) != {"cycles", "source"}:
            _fail(path, where, "must have exactly 'cycles' and 'source'")
        cycles = entry["cycles"]
        if isinstance(cycles, bool) or not isinstance(cycles, (int, float)) or cycles < 0:
            _fail(path, f"{where}.cycles", f"must be a non-negative number, got {cycles!r}")
        try:
            centi = centicycles(cycles)
        except ValueError:
            _fail(path, f"{where}.cycles", f"must have at most two decimals, got {cycles!r}")
        if not isinstance(entry["source"], str) or not entry["source"].strip():
            _fail(path, f"{where}.source", "must say where the figure comes from")
        coefficients[name] = Coefficient(centi, entry["source"])
    return coefficients, core, (clock, clock_source)


def available(directory=None):
    """Names of all board profiles, sorted."""
    directory = Path(directory) if directory else boards_dir()
    return sorted(p.stem for p in directory.glob("*.toml"))


def load(name, directory=None):
    """Load and validate the profile ``name`` (following ``extends``)."""
    directory = Path(directory) if directory else boards_dir()
    raw, path = _resolve(name, directory)
    if raw is None:
        raise UsageError(f"unknown board {name!r}",
                         hint=f"choose one of: {', '.join(available(directory))}")
    return _validate(raw, path)


def emulated(profile):
    """The real board a virtual profile stands in for (``sim`` extends ``esp32``), else ``profile`` itself: its name
    is what a virtual board reports and names its state folder, so ``--board sim`` and ``--board esp32`` in
    ``tinyhost sim`` share one flash."""
    if not profile.virtual:
        return profile
    parent = _read(profile.path).get("extends")
    return load(parent, profile.path.parent) if parent else profile


def load_all(directory=None):
    return [load(name, directory) for name in available(directory)]


def match_usb(vid, pid, directory=None):
    """Boards whose profile lists this USB VID:PID (ints), best guess first (fewest ids = most specific)."""
    key = f"{vid:04X}:{pid:04X}"
    hits = [b for b in load_all(directory) if key in b.usb_ids and not b.virtual]
    return sorted(hits, key=lambda b: len(b.usb_ids))


VIRTUAL_PREFIX = "sim:"


def from_spec(spec, directory=None):
    """``(profile, virtual)`` for a ``--board`` value: ``esp32`` (a real board), ``sim`` (the virtual board, an
    ESP32 stand-in) or ``sim:esp32s3`` (a virtual board with another profile's heap, flash and line rate)."""
    spec = spec or "esp32"
    if spec.startswith(VIRTUAL_PREFIX):
        profile = load(spec[len(VIRTUAL_PREFIX):], directory)
        if profile.virtual:
            raise UsageError(f"--board {spec}: {profile.name} is already the virtual board", hint="use --board sim")
        return profile, True
    profile = load(spec, directory)
    return profile, profile.virtual
