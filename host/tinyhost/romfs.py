"""ROMFS images: MicroPython's read-only filesystem for a flash partition a board maps into its address space.

Files in a mounted ROMFS (``/rom``) support the buffer protocol, so the engine reads a model's weights in place
(``weights="mapped"``, docs/engine.md). Images are built with mpremote's writer, the format ``mpremote romfs
build`` makes and ``mpremote romfs deploy`` writes to a board."""

from pathlib import Path

from .atomic import write_bytes_atomic


def build_image(files):
    """The bytes of a ROMFS image holding ``files`` (paths) at its root, under their own names."""
    from mpremote.romfs import VfsRomWriter

    w = VfsRomWriter()
    for f in files:
        f = Path(f)
        w.mkfile(f.name, f.read_bytes())
    return w.finalise()


def write_image(files, dest):
    """Write the ROMFS image of ``files`` to ``dest`` (atomically); returns ``dest``."""
    write_bytes_atomic(dest, build_image(files))
    return Path(dest)
