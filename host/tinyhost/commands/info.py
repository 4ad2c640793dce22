"""``tinyhost info``: what the firmware on a board reports about itself."""

import dataclasses
import json

import click

from ..ports import open_target
from .common import board_options, human_bytes, json_option, write_json


@click.command()
@board_options
@json_option("Also write the report as JSON to this file.")
def info(board_name, port, baud, state_dir, json_path):
    """Firmware version and hash, board, free heap and flash, MicroPython version, engine backends."""
    from ..client import Device

    with open_target(board_name, port, baud, state_dir=state_dir) as target:
        with Device.open(target.port, baud=baud) as dev:
            report = dataclasses.asdict(dev.info())
    report.pop("raw", None)
    report["port"] = target.port
    report["source"] = "virtual board" if target.virtual else "board"
    if json_path:
        write_json(json_path, json.dumps(report, indent=2, default=str))
    for key, value in report.items():
        if key.endswith("_bytes") and isinstance(value, int):
            value = f"{value} ({human_bytes(value)})"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        click.echo(f"{key.replace('_', ' '):<22} {value}")
