"""``tinyhost flash``: firmware files (and models) onto a board; ``--firmware IMAGE`` for MicroPython itself."""

import subprocess

import click

from .. import boards as board_profiles
from .. import console
from ..errors import TinyhostError, UsageError
from ..board import connect
from ..firmware_image import firmware_commands, no_image_on_virtual_board
from ..flash import (MLPERF_MODELS, check_fits_profile, firmware_items, model_item, model_remote_path, set_boot_model,
                     set_mlperf_model, with_plans)
from ..ports import find_port
from ..zoo import resolve
from .common import board_options, human_bytes


@click.command()
@board_options
@click.option("--model", "models", multiple=True, type=click.Path(dir_okay=False),
              help="Also put this .tflite model (or a model name, see `tinyhost models list`) on the board: "
                   "under /models/, or in its ROMFS partition (/rom/models/) when its profile has one. Repeatable.")
@click.option("--boot-model", default=None,
              help="The model the board loads by itself when an MLPerf Tiny / EEMBC runner sends its first command "
                   "(`tinyhost bench --dut eembc`, the official runner); put on the board like --model. "
                   "`none` names none any more. `tinyhost info` shows it.")
@click.option("--mlperf-model", type=click.Choice(MLPERF_MODELS + ("auto",)), default=None,
              help="The MLPerf Tiny benchmark the board names to a runner (`profile`): sww01 makes the official "
                   "runner run its streaming wakeword test over the kws boot model; auto: the one the boot model's "
                   "input size tells.")
@click.option("--firmware", "image", type=click.Path(dir_okay=False), default=None,
              help="Write this MicroPython image to the chip first (esptool/bossac; prints the commands).")
@click.option("--run", "run_commands", is_flag=True, help="With --firmware: run the printed commands.")
@click.option("--force", is_flag=True, help="Send every file, even those already on the board.")
def flash(board_name, port, baud, state_dir, models, boot_model, mlperf_model, image, run_commands, force):
    """Put tinyhost's firmware files (and --model files) on a board, skipping files already there."""
    if image:
        _write_micropython(board_name, port, image, run_commands)
        return
    profile, _ = board_profiles.from_spec(board_name)
    model_paths = [resolve(m) for m in models]
    boot_path = None if boot_model in (None, "none") else resolve(boot_model)
    if boot_path is not None and boot_path not in model_paths:
        model_paths.append(boot_path)
    in_romfs = bool(profile.romfs_bytes)
    model_items = [model_item(p, None if in_romfs else profile) for p in model_paths]   # refused before sending
    items = firmware_items(board=profile) + ([] if in_romfs else model_items)
    check_fits_profile(items, profile)
    with connect(board_name, port, baud, state_dir=state_dir) as b:
        where = f"virtual {b.profile.name}" if b.virtual else b.profile.name
        click.echo(f"flashing {len(with_plans(items))} files to {b.port} ({where})")   # with load plans
        with console.TransferProgress() as progress:
            report, rom = b.flash(model_paths, force=force, progress=progress)
        if boot_model is not None:
            set_boot_model(b.dev, boot_path and model_remote_path(boot_path, b.profile))
        if mlperf_model is not None:
            set_mlperf_model(b.dev, None if mlperf_model == "auto" else mlperf_model)
        click.echo(f"sent {len(report.sent)} files ({human_bytes(report.bytes_sent)}) in {report.seconds:.1f} s "
                   f"({human_bytes(report.bytes_per_s)}/s), {len(report.skipped)} already up to date")
        if report.removed:
            click.echo(f"removed what an older firmware left (not in this one): {', '.join(report.removed)}")
        if rom is not None:
            state = (f"written ({human_bytes(rom.bytes_sent)} image in {rom.seconds:.1f} s)" if rom.sent
                     else "already holds them")
            click.echo(f"ROMFS partition (firmware package /rom/tinyfw, models /rom/models/ with weights read in "
                       f"place): {len(model_paths)} models, {state}")
        if boot_model is not None:
            click.echo(f"boot model: {model_remote_path(boot_path, b.profile) if boot_path else 'none'} "
                       f"(what the board runs for an MLPerf Tiny / EEMBC runner)")
        if mlperf_model is not None:
            click.echo(f"MLPerf Tiny benchmark named to a runner: {mlperf_model}")


def _write_micropython(board_name, port, image, run_commands):
    if not board_name:
        raise UsageError("--firmware needs --board to know the chip", hint="e.g. --board esp32")
    board, virtual = board_profiles.from_spec(board_name)         # sim:esp32s3 is virtual, its profile is not
    if virtual:
        raise no_image_on_virtual_board()
    if port is None:
        port = find_port(board.name)
    commands = firmware_commands(board, image, port)
    for command in commands:
        click.echo(f"# {command.note}\n{command.shell()}")
    if not run_commands:
        click.echo("(not run: add --run to run these commands)")
        return
    for command in commands:
        try:
            subprocess.run(command.argv, check=True)
        except FileNotFoundError:
            raise TinyhostError(f"{command.argv[0]} is not installed",
                                hint="pip install 'tinyhost[esp]' (esptool) or install bossac") from None
        except subprocess.CalledProcessError as e:
            raise TinyhostError(f"{command.argv[0]} failed with exit code {e.returncode}",
                                hint="check the port and put the board in bootloader mode") from None

