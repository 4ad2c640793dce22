"""``tinyhost info``: what the firmware on a board reports about itself."""

import dataclasses
import json

import click

from ..ports import open_target
from .common import board_options, human_bytes


@click.command()
@board_options
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the report as JSON to this file ('-' for stdout only).")
def info(board_name, port, baud, state_dir, json_path):
    """Firmware version and hash, board, free heap and flash, MicroPython version, engine backends."""
    from ..client import Device

    with open_target(board_name, port, baud, state_dir=state_dir) as target:
        with Device.open(target.port, baud=baud) as dev:
            report = dataclasses.asdict(dev.info())
    report.pop("raw", None)
    report["port"] = target.port
    report["source"] = "virtual board" if target.virtual else "board"
    if json_path == "-":
        click.echo(json.dumps(report, indent=2, default=str))
        return
    if json_path:
        from ..atomic import write_text_atomic
        write_text_atomic(json_path, json.dumps(report, indent=2, default=str) + "\n")
    for key, value in report.items():
        if key == "boot_model" and not value:
            value = "none (`tinyhost flash --boot-model NAME` names one)"
        elif key.endswith("_bytes") and isinstance(value, int):
            value = f"{value} ({human_bytes(value)})"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        click.echo(f"{key.replace('_', ' '):<22} {value}")
