"""``tinyhost models list|pull``: shipped models and the official MLPerf Tiny models in the cache."""

import dataclasses
import json

import click
from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn

from .. import console, zoo
from ..errors import ModelDownloadError
from .common import human_bytes, json_option, write_json


@click.group()
def models():
    """Shipped models and the official MLPerf Tiny models (kws01, vww01, ic01, ad01)."""


@models.command("list")
@json_option("Also write the list as JSON to this file.")
def list_cmd(json_path):
    """List shipped and pullable models with their size and status."""
    rows = zoo.list_models()
    table = console.table("name", "kind", "task", "input", "size", "status", "path", right={"size"})
    for st in rows:
        e = st.entry
        table.add_row(e.name, e.kind, e.task, "x".join(str(d) for d in e.input_shape), human_bytes(st.size_bytes),
                      st.state, str(st.path))
    console.print_table(table)
    click.echo(f"\ncache: {zoo.cache_dir()}  (set TINYHOST_CACHE to move it)")
    if any(st.state == "not pulled" for st in rows):
        click.echo("pull the official models with: tinyhost models pull kws01 vww01 ic01 ad01")
    if json_path:
        document = {"cache": str(zoo.cache_dir()),
                    "models": [{**dataclasses.asdict(st.entry), "path": str(st.path), "state": st.state,
                                "size_bytes": st.size_bytes} for st in rows]}
        write_json(json_path, json.dumps(document, indent=2))


@models.command("pull")
@click.argument("names", nargs=-1)
@click.option("--from", "source", metavar="DIR|URL", default=None,
              help="Install from a local folder (searched recursively) or a mirror's base URL instead of the "
                   "official address.")
@click.option("--force", is_flag=True, help="Download again even when the cached file is good.")
@click.option("--timeout", "timeout_s", type=float, default=60.0, show_default=True,
              help="Network timeout in seconds.")
def pull_cmd(names, source, force, timeout_s):
    """Download official models into the cache, verifying their SHA-256 (default: all four)."""
    names = names or tuple(e.name for e in zoo.OFFICIAL)
    failed = []
    with console.progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                          console.BytesPerSecond(), TimeRemainingColumn(), transient=True) as bars:
        for name in names:
            task = bars.add_task(name, total=None)
            try:
                result = zoo.pull(name, source=source, force=force, timeout_s=timeout_s,
                                  progress=lambda done, total, task=task: bars.update(task, completed=done,
                                                                                      total=total))
            except ModelDownloadError as e:           # one model's failure does not stop the others
                click.echo(f"{name}: not pulled: {e.message}", err=True)
                failed.append(e)
                continue
            finally:
                bars.remove_task(task)
            verb = "already cached" if result.skipped else "pulled"
            click.echo(f"{result.name}: {verb}, {human_bytes(result.size_bytes)}, "
                       f"sha256 {result.sha256[:16]}…  -> {result.path}")
    if len(failed) == 1:
        raise failed[0]
    if failed:
        raise ModelDownloadError(f"{len(failed)} of {len(names)} models not pulled: "
                                 + "; ".join(e.message for e in failed), hint=failed[0].hint)
