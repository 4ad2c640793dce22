"""``tinyhost split plan MODEL``: where to cut a model between the board and the server, for a board and a link."""

import json

import click

from .. import console
from .common import json_option, write_json


@click.group("split")
def split_cmd():
    """Split inference: the board runs the first operators, the server the rest (docs/split.md)."""


@split_cmd.command("plan")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--board", "board_spec", default="sim:esp32", show_default=True,
              help="Board profile whose board time and power the plan uses (esp32, sim:esp32s3, ...).")
@click.option("--link", "link_name", type=click.Choice(["wifi", "ble", "uart"]), default="wifi", show_default=True,
              help="Link profile of the link model (lk-1); uart runs at the board profile's baud rate.")
@click.option("--objective", type=click.Choice(["latency", "energy"]), default="latency", show_default=True,
              help="What the best split point minimises.")
@click.option("--model-id", default=None, help="The id the board sends (its length is on the wire; default: the "
                                               "model file's stem).")
@json_option("Also write the plan as JSON to this file ('-': stdout).")
def plan_cmd(model, board_spec, link_name, objective, model_id, json_path):
    """Per split point k (operators [0, k) on the board): board ms, bytes on the link, server ms, link ms, total
    and the board's energy; the best k is marked. k = 0 is full offload, the last k runs everything locally."""
    from ..split import build_plan

    p = build_plan(model, board_spec, link_name, objective, model_id)
    click.echo(f"{p.model} on {p.board} over {p.link}: {len(p.rows) - 1} operators, best for {p.objective}: "
               f"k = {p.best_k}")
    t = console.table("k", "after", "board ms", "sent B", "link ms", "server ms", "total ms", "energy mJ", "",
                      right={"k", "board ms", "sent B", "link ms", "server ms", "total ms", "energy mJ"})
    last = len(p.rows) - 1
    for r in p.rows:
        after = "(full offload)" if r.k == 0 else r.after + (" (local)" if r.k == last else "")
        t.add_row(str(r.k), after, f"{r.board_ms + r.serialise_ms:,.2f}", str(r.request_bytes),
                  f"{r.link_ms:,.2f}", f"{r.server_ms:,.2f}", f"{r.total_ms:,.2f}", f"{r.energy_mj:,.3f}",
                  "<- best" if r.best else "")
    console.print_table(t)
    click.echo(f"board ms: the head (operators [0, k)) and serialising, {p.board_time_model} estimates; link ms: "
               f"request and reply, {p.link_model} ({p.link}); server ms: {p.server}; {p.note}")
    if json_path:
        write_json(json_path, json.dumps(p.to_dict(), indent=2))
