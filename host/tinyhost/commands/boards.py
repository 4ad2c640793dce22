"""``tinyhost boards``: board profiles, the virtual boards, and the serial ports that look like one of them."""

import dataclasses
import json

import click

from .. import boards as board_profiles
from .. import console
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
    right = {"clock", "heap", "flash fs", "ROMFS", "baud"}
    table = console.table("board", "MCU", "clock", "heap", "flash fs", "ROMFS", "baud", "radios", right=right)
    for b in profiles:
        romfs = f"{b.romfs_bytes // 1024} KB" if b.romfs_bytes else "-"
        table.add_row(b.name, b.mcu + (" [virtual]" if b.virtual else ""), f"{b.clock_mhz} MHz",
                      f"{b.heap_bytes // 1024} KB", f"{b.fs_bytes // 1024} KB", romfs, str(b.baud),
                      ", ".join(b.radios) or "none")
    console.print_table(table)
    virtual = virtual_boards(profiles)
    click.echo("\nvirtual boards, for --board (MicroPython's unix VM with the named profile's heap, flash and line "
               "rate; sim is sim:esp32):")
    click.echo("  " + "  ".join(spec for spec, _ in virtual))
    click.echo("")
    if not ports:
        click.echo("serial ports: none with a USB VID:PID found (use --board sim for the virtual board)")
    else:
        table = console.table("port", "USB VID:PID", "description", "likely board")
        for p in ports:
            table.add_row(p.device, f"{p.vid:04X}:{p.pid:04X}", p.description or "",
                          ", ".join(p.boards) or "unknown board")
        console.print_table(table, "serial ports")
    if json_path:
        document = {
            "boards": [{k: v for k, v in dataclasses.asdict(b).items() if k != "path"} for b in profiles],
            "virtual_boards": [{"board": spec, "emulates": name} for spec, name in virtual],
            "ports": [dataclasses.asdict(p) for p in ports],
        }
        write_json(json_path, json.dumps(document, indent=2))
