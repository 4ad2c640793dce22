"""``tinyhost info``: what the firmware on a board reports about itself."""

import dataclasses
import json

import click

from .. import console
from ..board import connect
from .common import board_options, human_bytes, json_option, write_json


@click.command()
@board_options
@json_option("Also write the report as JSON to this file.")
def info(board_name, port, baud, state_dir, json_path):
    """Firmware version and hash, board, free heap and flash, MicroPython version, engine backends."""
    with connect(board_name, port, baud, state_dir=state_dir) as b:
        report = dataclasses.asdict(b.info())
    report.pop("raw", None)
    report["port"] = b.port
    report["source"] = "virtual board" if b.virtual else "board"
    if json_path:
        write_json(json_path, json.dumps(report, indent=2, default=str))
    fields = []
    for key, value in report.items():
        if key == "boot_model" and not value:
            value = "none (`tinyhost flash --boot-model NAME` names one)"
        elif key.endswith("_bytes") and isinstance(value, int):
            value = f"{value} ({human_bytes(value)})"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        fields.append((key.replace("_", " "), value))
    console.print_fields(fields)
