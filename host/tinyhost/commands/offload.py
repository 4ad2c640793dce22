"""``tinyhost serve`` (the offload server) and ``tinyhost offload on|off|auto|split|status|keygen|relay``."""

import asyncio
import contextlib
import logging
import signal

import click

from .. import console
from ..errors import UsageError
from .common import board_options

log = logging.getLogger(__name__)


@click.command()
@click.option("--model", "model_specs", multiple=True, required=True,
              help="Model to serve: a name from `tinyhost models list` (kws, vww, ic01, ...), a .tflite path, or "
                   "ID=PATH. Repeat for more models.")
@click.option("--reference-model", default=None,
              help="Larger model (e.g. float32) whose answer is returned instead: PATH, or ID=PATH for one of "
                   "several models. Same input and output element counts as the device model.")
@click.option("--listen", default="127.0.0.1:7373", show_default=True,
              help="HOST:PORT to listen on. Anything but loopback needs --token-file.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="Per-device keys (JSON, see `tinyhost offload keygen`); without it, no authentication.")
@click.option("--workers", type=int, default=1, show_default=True, help="Workers, each with its own interpreters.")
@click.option("--threads", is_flag=True,
              help="Run models on worker threads (helps backends that release the GIL, e.g. LiteRT).")
@click.option("--backend", type=click.Choice(["auto", "tflm", "litert"]), default="auto", show_default=True)
@click.option("--max-frame-bytes", type=int, default=1 << 20, show_default=True)
@click.option("--max-clients", type=int, default=256, show_default=True,
              help="Authenticated sessions at once (connections before HELLO count under --max-pending).")
@click.option("--max-pending", type=int, default=512, show_default=True,
              help="Connections that have not sent HELLO yet; one more closes the oldest of them.")
@click.option("--max-per-device", type=int, default=4, show_default=True,
              help="Sessions one device id may hold at once.")
@click.option("--fair-share", type=float, default=2.0, show_default=True,
              help="While other devices are active, one device gets at most this many equal shares of the "
                   "workers' time (its requests wait); a device alone gets all of it. 0: round-robin only.")
def serve(model_specs, reference_model, listen, token_file, workers, threads, backend, max_frame_bytes,
          max_clients, max_pending, max_per_device, fair_share):
    """Run boards' models for them: the offload server (asyncio, many devices at once)."""
    from ..offload import auth, models, server

    host, port = server.parse_listen(listen)
    entries = {}
    for spec in model_specs:
        model_id, path = models.resolve_model(spec)
        if model_id in entries:
            raise UsageError(f"model id {model_id!r} given twice", hint="name them with ID=PATH")
        entries[model_id] = models.ModelEntry(model_id, path)
    if reference_model:
        ref_id, _, ref_path = reference_model.rpartition("=") if "=" in reference_model else ("", "", reference_model)
        if not ref_id:
            if len(entries) != 1:
                raise UsageError("--reference-model: which model is it for?", hint="write ID=PATH")
            ref_id = next(iter(entries))
        if ref_id not in entries:
            raise UsageError(f"--reference-model names {ref_id!r}, which is not served")
        _, ref_file = models.resolve_model(ref_path)
        entries[ref_id] = models.ModelEntry(ref_id, entries[ref_id].path, ref_file)
    keys = auth.KeyStore(token_file) if token_file else None
    cfg = server.ServerConfig(host=host, port=port, workers=workers, threads=threads, backend=backend,
                              reference_backend=backend, max_frame_bytes=max_frame_bytes, max_clients=max_clients,
                              max_pending=max_pending, max_per_device=max_per_device, fair_share=fair_share)
    srv = server.OffloadServer(entries, keys, cfg)

    async def run():
        address = await srv.start()
        for mid, (inp, out, has_ref) in srv.model_specs().items():
            click.echo(f"serving {mid}: {entries[mid].path.name} {inp.dtype}{list(inp.shape)} -> "
                       f"{out.dtype}{list(out.shape)}" + (f", reference {entries[mid].reference_path.name}"
                                                          if has_ref else ""))
        click.echo(f"listening on {address[0]}:{address[1]} "
                   + (f"(authentication: {len(keys)} device(s) in {token_file})" if keys
                      else "(no authentication: loopback only)"))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await srv.close()
        click.echo(f"stopped: {srv.stats.summary()}")

    asyncio.run(run())


@click.group()
def offload():
    """Switch a board's inference between local and offloaded (on / off / auto / split), manage keys, relay serial."""


@contextlib.contextmanager
def _open(board_name, port, baud, state_dir):
    from ..board import connect
    with connect(board_name, port, baud, state_dir=state_dir) as b:
        yield b.dev


def _set_mode(board_name, port, baud, state_dir, split=None, **changes):
    """Write the board's offload config; split: for mode "split", a function (model id, board profile, transport)
    -> the config's split field."""
    from ..board import connect
    from ..offload import auth, board
    token_file = changes.pop("token_file", None)
    with connect(board_name, port, baud, state_dir=state_dir) as b:
        dev = b.dev
        if changes.get("mode") != "off" and not (changes.get("model_id") and changes.get("device_id")):
            current = dict(board.read_config(dev) or {})
            current.update({k: v for k, v in changes.items() if v})
            changes["model_id"], changes["device_id"] = board.default_ids(dev, current)
        if split is not None:
            current = board.read_config(dev) or {}
            changes["split"] = split(changes.get("model_id") or current.get("model_id"), b.profile,
                                     changes.get("transport") or current.get("transport", "tcp"))
        if token_file:
            device_id = changes.get("device_id") or (board.read_config(dev) or {}).get("device_id")
            if not device_id:
                raise UsageError("--device-id is needed the first time a key is given to a board")
            changes["device_id"] = device_id
            changes["key"] = auth.ensure_device_key(token_file, device_id).hex()
        cfg = board.configure(dev, **changes)
    shown = board.redacted(cfg)
    split_field = shown.pop("split", None)
    if cfg["mode"] == "split":
        shown["split"] = f"at={split_field['at']},link={split_field['link']}"
    click.echo(f"offload {cfg['mode']} " + " ".join(f"{k}={v}" for k, v in shown.items() if k != "mode"))


def _remote_options(f):
    for option in reversed((
            click.option("--server", default=None, help="HOST:PORT of `tinyhost serve` (tcp transport)."),
            click.option("--model-id", default=None,
                         help="The model id the server serves (e.g. kws). Default: the board's config, else the "
                              "name of its boot model (`tinyhost flash --boot-model`), else of its only model."),
            click.option("--device-id", default=None,
                         help="This board's name towards the server. Default: the board's config, else its name "
                              "and its chip's unique id (esp32-a1b2c3d4e5f6)."),
            click.option("--token-file", type=click.Path(dir_okay=False), default=None,
                         help="Take (or add) this board's key from the token file the server uses."),
            click.option("--transport", type=click.Choice(["tcp", "serial"]), default=None,
                         help="tcp (Wi-Fi; the virtual board's loopback) or serial (relayed by the host)."),
            click.option("--timeout-ms", type=int, default=None, help="Per-request time limit before falling back."),
            click.option("--want", type=click.Choice(["default", "model", "reference"]), default=None,
                         help="Which server model answers (default: the reference when the server has one)."))):
        f = option(f)
    return f


@offload.command("on")
@board_options
@_remote_options
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Kept for `offload auto` (default 0.8); `on` offloads every prediction.")
def offload_on(board_name, port, baud, state_dir, threshold, **remote):
    """Always offload; fall back to local inference on timeout or error (counted)."""
    _set_mode(board_name, port, baud, state_dir, mode="on", threshold=threshold, **remote)


@offload.command("auto")
@board_options
@_remote_options
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Offload when the local top-1 confidence is below this (default 0.8).")
def offload_auto(board_name, port, baud, state_dir, threshold, **remote):
    """Run locally; offload only when the local top-1 confidence is below --threshold."""
    _set_mode(board_name, port, baud, state_dir, mode="auto", threshold=threshold, **remote)


@offload.command("split")
@board_options
@_remote_options
@click.option("--at", "at", default="auto", show_default=True,
              help="Split point K: the board runs operators [0, K), the server the rest; or auto: the best K of "
                   "the plan (`tinyhost split plan`) for the link the board is on.")
@click.option("--link", "link_name", type=click.Choice(["wifi", "ble", "uart"]), default=None,
              help="The link the board is on now, for --at auto (default: the transport's: tcp -> Wi-Fi when the "
                   "board has it, else BLE; serial -> its UART relay).")
@click.option("--model", "model_spec", default=None,
              help="The board's model on this host: a .tflite path or a registry name (default: the model id).")
@click.option("--objective", type=click.Choice(["latency", "energy"]), default="latency", show_default=True,
              help="What --at auto minimises.")
def offload_split(board_name, port, baud, state_dir, at, link_name, model_spec, objective, **remote):
    """Split inference: the board runs the first operators, the server the rest; local on a failure."""
    from ..linkmodel import for_transport
    from ..offload.models import resolve_model
    from ..split import split_config

    if at != "auto":
        try:
            at = int(at)
        except ValueError:
            raise UsageError(f"--at must be a split point (an integer) or auto, not {at!r}",
                             hint="`tinyhost split plan MODEL` lists the split points") from None

    def split(model_id, profile, transport):
        _, path = resolve_model(model_spec or model_id)
        link = link_name or for_transport(transport, profile).name
        cfg, plans = split_config(path, at, link, profile.name, objective, model_id)
        chosen = cfg["best"][link] if at == "auto" else at
        note = ""
        if plans:
            best = plans[link].best_k
            note = (f" (auto: the {objective} plan's best for {link}"
                    + (f" inside the model; its best is k = {best}, {'full offload' if best == 0 else 'local'}"
                       if best != chosen else "")
                    + "; per link: " + ", ".join(f"{name} {k}" for name, k in cfg["best"].items()) + ")")
        click.echo(f"split at k = {chosen}{note}")
        return cfg

    _set_mode(board_name, port, baud, state_dir, mode="split", split=split, **remote)


@offload.command("off")
@board_options
def offload_off(board_name, port, baud, state_dir):
    """Always run locally (the rest of the config is kept for the next `on`)."""
    _set_mode(board_name, port, baud, state_dir, mode="off")


@offload.command("status")
@board_options
def offload_status(board_name, port, baud, state_dir):
    """Show the board's offload config (the key redacted)."""
    from ..offload import board
    with _open(board_name, port, baud, state_dir) as dev:
        cfg = board.read_config(dev)
        warning = board.live_warning(dev)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    if cfg is None:
        click.echo(f"no {board.CONFIG_PATH} on the board: offload is off")
        return
    console.print_fields(board.redacted(cfg).items())


@offload.command("keygen")
@click.option("--token-file", type=click.Path(dir_okay=False), required=True)
@click.option("--device-id", required=True)
@click.option("--rotate", is_flag=True, help="Replace the device's key (the board needs `offload on` again).")
def offload_keygen(token_file, device_id, rotate):
    """Add a device with a fresh random key to a token file (created with mode 0600)."""
    from ..offload import auth
    auth.ensure_device_key(token_file, device_id, rotate=rotate)
    click.echo(f"{device_id}: key {'rotated' if rotate else 'ready'} in {token_file}")


@offload.command("relay")
@click.option("--port", required=True, help="Serial port of a board using the serial transport.")
@click.option("--baud", type=int, default=115200, show_default=True)
@click.option("--server", default="127.0.0.1:7373", show_default=True)
@click.option("--seconds", type=float, default=None, help="Stop after this long (default: until Ctrl-C).")
def offload_relay(port, baud, server, seconds):
    """Forward a board's offload frames from its serial port to the server; print the board's other output."""
    import serial

    from ..errors import PortBusy, TransportError
    from ..offload.relay import OffloadRelay, relay_stream
    from ..offload.server import parse_listen

    host, tcp_port = parse_listen(server)
    try:
        ser = serial.serial_for_url(port, baudrate=baud, timeout=0.05, exclusive=True)
    except serial.SerialException as e:
        if "busy" in str(e).lower() or "lock" in str(e).lower():
            raise PortBusy(f"{port} is in use") from None
        raise TransportError(f"cannot open {port}: {e}", hint="check --port") from None
    relay = OffloadRelay(host, tcp_port)
    try:
        n = relay_stream(ser, relay, on_text=lambda b: click.echo(b.decode(errors="replace"), nl=False),
                         max_seconds=seconds)
    finally:
        relay.close()
        ser.close()
    click.echo(f"\nrelayed {n} frames ({relay.frames_failed} could not reach the server)")
