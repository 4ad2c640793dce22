"""``tinyhost lab list|start``: the hands-on labs, copied into a working folder to do."""

import shlex

import click

from .. import console, labs


@click.group()
def lab():
    """Hands-on labs on the virtual board or a kit: list them, start one in a folder of your own."""


@lab.command("list")
def list_cmd():
    """The labs, with the time each takes on the virtual board."""
    t = console.table("lab", "title", "time", "folder")
    for item in labs.list_labs():
        t.add_row(str(item.number), item.title, item.time, item.name)
    console.print_table(t)
    click.echo("start one with: tinyhost lab start N [DIR]")


@lab.command("start")
@click.argument("number", type=int)
@click.argument("dest", required=False, type=click.Path(file_okay=False))
def start_cmd(number, dest):
    """Copy lab NUMBER into DEST (default: the lab's folder name, here) and print its first step."""
    item, folder = labs.start(number, dest)
    click.echo(f"lab {item.number}: {item.title} -> {folder}/")
    click.echo(f"read {folder}/README.md; the steps are in {folder}/steps.sh, the analysis in {folder}/analysis.ipynb "
               "(`jupyter execute --inplace analysis.ipynb` after the steps)")
    click.echo("first step:")
    click.echo(f"  cd {shlex.quote(str(folder))}")
    if item.first_step:
        click.echo(f"  {item.first_step}")
