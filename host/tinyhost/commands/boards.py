"""``tinyhost boards``: board profiles, and the serial ports that look like one of them."""

import click

from .. import boards as board_profiles
from .. import console


@click.command()
def boards():
    """List board profiles and detected serial ports (USB VID:PID) with their likely board."""
    from serial.tools import list_ports

    profiles = board_profiles.load_all()
    right = {"clock", "heap", "flash fs", "ROMFS", "baud"}
    table = console.table("board", "MCU", "clock", "heap", "flash fs", "ROMFS", "baud", "radios", right=right)
    for b in profiles:
        romfs = f"{b.romfs_bytes // 1024} KB" if b.romfs_bytes else "-"
        table.add_row(b.name, b.mcu + (" [virtual]" if b.virtual else ""), f"{b.clock_mhz} MHz",
                      f"{b.heap_bytes // 1024} KB", f"{b.fs_bytes // 1024} KB", romfs, str(b.baud),
                      ", ".join(b.radios) or "none")
    console.print_table(table)
    click.echo("")
    ports = [p for p in list_ports.comports() if p.vid is not None]
    if not ports:
        click.echo("serial ports: none with a USB VID:PID found (use --board sim for the virtual board)")
        return
    table = console.table("port", "USB VID:PID", "description", "likely board")
    for p in ports:
        guesses = board_profiles.match_usb(p.vid, p.pid)
        table.add_row(p.device, f"{p.vid:04X}:{p.pid:04X}", p.description or "",
                      ", ".join(b.name for b in guesses) or "unknown board")
    console.print_table(table, "serial ports")
