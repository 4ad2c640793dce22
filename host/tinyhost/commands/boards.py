"""``tinyhost boards``: board profiles, and the serial ports that look like one of them."""

import click

from .. import boards as board_profiles


@click.command()
def boards():
    """List board profiles and detected serial ports (USB VID:PID) with their likely board."""
    from serial.tools import list_ports

    profiles = board_profiles.load_all()
    width = max(len(b.name) for b in profiles)
    click.echo(f"{'board':<{width}} {'MCU':<42} {'clock':>8} {'heap':>9} {'flash fs':>10} {'ROMFS':>8} {'baud':>7}"
               f"  radios")
    for b in profiles:
        radios = ", ".join(b.radios) or "none"
        mcu = b.mcu + (" [virtual]" if b.virtual else "")
        romfs = f"{b.romfs_bytes // 1024} KB" if b.romfs_bytes else "-"
        click.echo(f"{b.name:<{width}} {mcu:<42} {b.clock_mhz:>5} MHz {b.heap_bytes // 1024:>6} KB "
                   f"{b.fs_bytes // 1024:>7} KB {romfs:>8} {b.baud:>7}  {radios}")
    click.echo("")
    ports = [p for p in list_ports.comports() if p.vid is not None]
    if not ports:
        click.echo("serial ports: none with a USB VID:PID found (use --board sim for the virtual board)")
        return
    click.echo("serial ports:")
    for p in ports:
        guesses = board_profiles.match_usb(p.vid, p.pid)
        guess = ", ".join(b.name for b in guesses) or "unknown board"
        click.echo(f"  {p.device:<16} {p.vid:04X}:{p.pid:04X}  {p.description or ''}  -> {guess}")
