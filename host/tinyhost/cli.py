"""The ``tinyhost`` command line: a thin layer that parses options, calls the client, formats dataclasses.

Every :class:`~tinyhost.errors.TinyhostError` ends here: printed as ``tinyhost: <what happened> — <what to do>``
on stderr, exit code from the error class (docs/cli.md lists them); the traceback only with ``--debug``.
"""

import logging
import sys

import click

from . import __version__
from .errors import Interrupted, TinyhostError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tinyhost")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for protocol frames).")
@click.pass_context
def cli(ctx, debug, verbose):
    """Flash, benchmark and offload ML models on microcontrollers (or the virtual board)."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register_commands():
    # Each command lives in its own module under tinyhost/commands/ and is added here, one line each.
    from .commands import boards as boards_cmd
    cli.add_command(boards_cmd.boards)
    from .commands import flash as flash_cmd; cli.add_command(flash_cmd.flash)
    from .commands import info as info_cmd; cli.add_command(info_cmd.info)
    # -- more commands are registered below --
    from .commands import bench as bench_cmd; cli.add_command(bench_cmd.bench)
    from .commands import models as models_cmd; cli.add_command(models_cmd.models)
    from .commands import sim as sim_cmd; cli.add_command(sim_cmd.sim)
    from .commands import model as model_cmd; cli.add_command(model_cmd.model)
    from .commands import calibrate as calibrate_cmd; cli.add_command(calibrate_cmd.calibrate)
    from .commands import offload as offload_cmd; cli.add_command(offload_cmd.serve)
    cli.add_command(offload_cmd.offload)
    from .commands import infer as infer_cmd; cli.add_command(infer_cmd.infer); cli.add_command(infer_cmd.verify)
    from .commands import listen as listen_cmd; cli.add_command(listen_cmd.listen)
    from .commands import experiment as experiment_cmd; cli.add_command(experiment_cmd.experiment)
    cli.add_command(experiment_cmd.results); cli.add_command(experiment_cmd.budget)
    from .commands import split as split_cmd; cli.add_command(split_cmd.split_cmd)
    from .commands import lab as lab_cmd; cli.add_command(lab_cmd.lab)


_register_commands()


def main(argv=None):
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="tinyhost", standalone_mode=False)
    except TinyhostError as e:
        if debug:
            raise
        from .console import printable      # names in the message come from outside (files, boards, servers)
        click.echo(f"tinyhost: {printable(e)}", err=True)
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("tinyhost: interrupted", err=True)
        sys.exit(Interrupted.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    sys.exit(0)


if __name__ == "__main__":
    main()
