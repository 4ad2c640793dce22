"""``tinyhost boards``: board profiles, the virtual boards, and the serial ports that look like one of them."""

import dataclasses
import json

import click

from .. import boards as board_profiles
from ..ports import detect_ports
from .common import json_option, write_json


def virtual_boards(profiles):
    """``(--board value, profile it emulates)`` for every virtual board: ``sim`` and ``sim:NAME`` for each real
    profile."""
    specs = [("sim", board_profiles.emulated(p).name) for p in profiles if p.virtual]
    return specs + [(board_profiles.VIRTUAL_PREFIX + p.name, p.name) for p in profiles if not p.virtual]


@click.command()
@json_option("Also write the profiles, virtual boards and detected ports as JSON to this file.")
def boards(json_path):
    """List board profiles, the virtual boards (sim, sim:NAME) and detected serial ports (USB VID:PID) with their
    likely board."""
    profiles = board_profiles.load_all()
    ports = detect_ports()
    width = max(len(b.name) for b in profiles)
    click.echo(f"{'board':<{width}} {'MCU':<42} {'clock':>8} {'heap':>9} {'flash fs':>10} {'ROMFS':>8} {'baud':>7}"
               f"  radios")
    for b in profiles:
        radios = ", ".join(b.radios) or "none"
        mcu = b.mcu + (" [virtual]" if b.virtual else "")
        romfs = f"{b.romfs_bytes // 1024} KB" if b.romfs_bytes else "-"
        click.echo(f"{b.name:<{width}} {mcu:<42} {b.clock_mhz:>5} MHz {b.heap_bytes // 1024:>6} KB "
                   f"{b.fs_bytes // 1024:>7} KB {romfs:>8} {b.baud:>7}  {radios}")
    virtual = virtual_boards(profiles)
    click.echo("\nvirtual boards, for --board (MicroPython's unix VM with the named profile's heap, flash and line "
               "rate; sim is sim:esp32):")
    click.echo("  " + "  ".join(spec for spec, _ in virtual))
    click.echo("")
    if not ports:
        click.echo("serial ports: none with a USB VID:PID found (use --board sim for the virtual board)")
    else:
        click.echo("serial ports:")
        for p in ports:
            guess = ", ".join(p.boards) or "unknown board"
            click.echo(f"  {p.device:<16} {p.vid:04X}:{p.pid:04X}  {p.description}  -> {guess}")
    if json_path:
        document = {
            "boards": [{k: v for k, v in dataclasses.asdict(b).items() if k != "path"} for b in profiles],
            "virtual_boards": [{"board": spec, "emulates": name} for spec, name in virtual],
            "ports": [dataclasses.asdict(p) for p in ports],
        }
        write_json(json_path, json.dumps(document, indent=2))
