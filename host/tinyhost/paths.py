"""Where the firmware files and board profiles are, installed or in a source checkout."""

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_SOURCE_ROOT = _PACKAGE_DIR.parent.parent   # host/tinyhost -> repository root


def _shipped(packaged_name, source_name):
    packaged = _PACKAGE_DIR / packaged_name
    if packaged.is_dir():
        return packaged
    source = _SOURCE_ROOT / source_name
    if source.is_dir():
        return source
    raise FileNotFoundError(
        f"tinyhost cannot find its {source_name}/ files (looked in {packaged} and {source}); reinstall tinyhost")


def firmware_dir():
    """The directory holding the device firmware (``tinyfw`` package, ``main.py``)."""
    return _shipped("_firmware", "device")


def boards_dir():
    """The directory holding the board profiles (``*.toml``)."""
    return _shipped("_boards", "boards")


def models_dir():
    """The directory holding shipped models, or None when they are not installed."""
    try:
        return _shipped("_models", "models")
    except FileNotFoundError:
        return None


def labs_dir():
    """The directory holding the hands-on labs (one folder each, ``NN-name/``)."""
    return _shipped("_labs", "labs")


def cache_dir(kind):
    """tinyhost's cache for ``kind`` (``models``, ``plan``, ``mpy``): ``$TINYHOST_CACHE/<kind>``, else
    ``$XDG_CACHE_HOME/tinyhost/<kind>`` (``~/.cache/tinyhost/<kind>``)."""
    import os

    base = os.environ.get("TINYHOST_CACHE")
    if base:
        return Path(base).expanduser() / kind
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinyhost" / kind
