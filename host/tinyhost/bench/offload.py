"""``tinyhost bench --offload``: the same inputs through the board's INFER twice -- offload off, then on (or auto)
-- and the two passes side by side: latency by stage, accuracy, agreement with the server's reference model,
correct predictions per second, an energy estimate with radio time, fallbacks and retries.

The board decides each answer itself (device/tinyfw/cmd_model.py reads /offload.json); the host only switches the
config between passes (and puts the board's own config back afterwards) and asks INFER for its offload record
(``tinyhost.offload.board.infer_with_info``). Without ``--server`` an in-process server on 127.0.0.1 serves the
benchmarked model for the run.
"""

import logging
import time
from dataclasses import asdict, dataclass

from .. import errors
from . import metrics as bench_metrics
from .datasets import to_model_input
from .results import OffloadPass, OffloadResult

log = logging.getLogger(__name__)

DEFAULT_INPUTS = 20            # synthetic inputs when no --dataset is given
DEFAULT_LINK_RATE_BPS = 1_000_000
BENCH_DEVICE_ID = "tinyhost-bench"


@dataclass
class OffloadOptions:
    server: str = None             # HOST:PORT; None: start one in-process on 127.0.0.1 for the run
    mode: str = "on"               # the offloaded pass: on | auto
    threshold: float = None        # auto
    model_id: str = None           # default: what `tinyhost serve --model SAME` would call it
    device_id: str = None
    token_file: str = None
    reference_model: str = None    # in-process server only
    timeout_ms: int = None
    want: str = "default"          # default: the server's reference model when it has one; model; reference
    inputs: int = DEFAULT_INPUTS   # without a dataset
    link_rate_bps: int = DEFAULT_LINK_RATE_BPS


class LocalServer:
    """An OffloadServer on 127.0.0.1 in a background thread, for one bench run."""

    def __init__(self, model_id, model_path, reference_path=None, keys=None):
        from ..offload import models, server

        entry = models.ModelEntry(model_id, model_path, reference_path)
        self.thread = server.ServerThread(server.OffloadServer({model_id: entry}, keys,
                                                               server.ServerConfig(host="127.0.0.1", port=0)))
        self.host, self.port = self.thread.start()

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def stop(self):
        self.thread.stop()


def _inputs(ds, opts, tensor, benchmark):
    """[(index, label or None, input bytes)], and where they come from."""
    from .runner import synthetic_inputs

    if ds is not None:
        labelled = benchmark != "ad01"
        return ([(it.index, it.label if labelled else None, to_model_input(ds.read(it), ds.sample_dtype, tensor))
                 for it in ds.items], f"dataset {ds.root} ({len(ds.items)} samples)")
    n = opts.inputs
    return ([(i, None, x) for i, x in enumerate(synthetic_inputs(tensor.nbytes, n, seed=1))],
            f"synthetic (pseudo-random bytes, {n} inputs)")


def _predicted(output, tensor):
    values = bench_metrics.dequantize(output, tensor.dtype, tensor.scale, tensor.zero_point)
    return int(values.argmax())


def _run_pass(name, dev, inputs, out_tensor, listener, pass_mode):
    from ..offload import board

    samples, outputs, records = [], [], []
    t0 = time.monotonic()
    for done, (index, label, data) in enumerate(inputs, 1):
        r = board.infer_with_info(dev, data, out_tensor.nbytes)
        if r.mode != pass_mode:
            raise errors.DeviceError(f"the board answered in offload mode {r.mode!r}, expected {pass_mode!r}",
                                     hint="the board did not take its /offload.json; check `tinyhost offload "
                                          "status` and that its tinyfw has tinyfw/offload")
        predicted = _predicted(r.output, out_tensor)
        outputs.append(r.output)
        records.append(r.record)
        sample = {"index": index, "label": label, "predicted": predicted, "output": r.output.hex()}
        sample.update(asdict(r.record))
        samples.append(sample)
        listener.offload_sample(name, done, len(inputs), sample)
    return samples, outputs, records, time.monotonic() - t0


def _summarise_pass(name, mode, samples, outputs, records, wall_s, board_profile, transport, link_rate_bps,
                    local_time=None):
    from ..offload import metrics

    s = metrics.summarise(records, board=board_profile, transport=transport, link_rate_bps=link_rate_bps)
    board_s = sum(r.total_us for r in records) / 1e6
    p = OffloadPass(name=name, mode=mode, requests=s.requests, offloaded=s.offloaded, fallbacks=s.fallbacks,
                    retries=s.retries, errors={str(k): v for k, v in s.errors.items()}, sources=dict(s.sources),
                    latency={k: asdict(v) for k, v in s.latency.items()}, board_time_s=board_s, host_wall_s=wall_s,
                    energy=asdict(s.energy) if s.energy else None, samples=samples)
    if local_time is not None:      # a virtual board: its compute and the link in board time
        from ..linkmodel import for_transport, offload_board_time

        p.board_time = offload_board_time(records, local_time, for_transport(transport, board_profile),
                                          board_profile).to_dict()
    labelled = [x for x in samples if x["label"] is not None]
    if labelled and len(labelled) == len(samples):
        p.correct = sum(1 for x in samples if x["predicted"] == x["label"])
        p.accuracy = p.correct / len(samples)
        if board_s > 0:
            p.correct_per_s = metrics.correct_per_second([x["predicted"] for x in samples],
                                                         [x["label"] for x in samples], board_s)
    return p


def _reference_outputs(address, model_id, inputs, in_tensor, device_id, key, timeout_s=10.0):
    """The server's reference model's answers for ``inputs``, or None when it has no reference model."""
    from ..offload import client, server, wire

    host, port = server.parse_listen(address)
    outs = []
    with client.OffloadClient(host, port, device_id=device_id, key=key, timeout_s=timeout_s) as c:
        for _, _, data in inputs:
            tensor = wire.Tensor(in_tensor.dtype, tuple(in_tensor.shape), in_tensor.scale, in_tensor.zero_point,
                                 data)
            reply = c.infer(model_id, tensor, want=wire.WANT_REFERENCE, check=False).reply
            if reply.status == wire.NO_REFERENCE:
                return None
            if not reply.ok:
                raise client.OffloadRefused(reply.status, reply.message)
            outs.append(bytes(reply.tensor.data))
    return outs


def _agreement(outputs, others, tensor):
    from ..offload import metrics

    return asdict(metrics.agreement(outputs, others, tensor.dtype, tensor.scale, tensor.zero_point))


def run_offload(dev, load_model, model_path, ds, benchmark, board_profile, opts, listener, local_time=None):
    """Local pass, then offloaded pass, over the same inputs; returns an OffloadResult.

    ``local_time`` (a virtual board): the tinyhost.boardtime.BoardTime of one local inference; each pass then
    also carries its board time with the link modelled (tinyhost.linkmodel).

    ``dev`` is an open Device with tinyfw (and tinyfw/offload) on its filesystem; ``load_model()`` (re)loads the
    benchmarked model on it after a soft reset (:meth:`tinyhost.board.Board.load`: the config file's GET/PUT leave
    the heap in pieces) and returns its ModelInfo -- loading re-reads /offload.json. The board's own offload
    config is put back afterwards, whatever happens.
    """
    from ..offload import auth, board, models

    if opts.mode not in ("on", "auto"):
        raise errors.UsageError(f"--offload-mode must be on or auto, not {opts.mode!r}")
    model_id = opts.model_id or models.resolve_model(str(model_path))[0]
    previous = board.read_config(dev)
    base = dict(previous or {})
    device_id = opts.device_id or base.get("device_id") or BENCH_DEVICE_ID
    local_server = None
    if opts.server is None:
        keys = auth.KeyStore(opts.token_file) if opts.token_file else None
        ref = models.resolve_model(opts.reference_model)[1] if opts.reference_model else None
        local_server = LocalServer(model_id, model_path, ref, keys)
        address = local_server.address
        listener.message(f"offload: no --server given, so this run started its own offload server on {address} "
                         f"(in-process, model {model_id} = {model_path.name}"
                         + (f", reference {ref.name}" if ref else "") + ")")
    else:
        if opts.reference_model:
            raise errors.UsageError("--reference-model is for the server this run starts itself",
                                    hint="give it to `tinyhost serve`, or leave out --server")
        address = opts.server
    if opts.token_file:
        key = auth.ensure_device_key(opts.token_file, device_id).hex()
    elif base.get("server") == address and base.get("device_id") == device_id and local_server is None:
        key = base.get("key", "")
    else:
        key = ""
    remote = {"server": address, "transport": "tcp", "model_id": model_id, "device_id": device_id, "key": key,
              "want": opts.want}
    if opts.timeout_ms is not None:
        remote["timeout_ms"] = opts.timeout_ms
    if opts.threshold is not None:
        remote["threshold"] = opts.threshold
    warning = ""
    try:
        board.configure(dev, mode="off")
        info = load_model()
        in_t, out_t = info.inputs[0], info.outputs[0]
        inputs, source = _inputs(ds, opts, in_t, benchmark)
        listener.message(f"offload: local pass over {len(inputs)} inputs ({source})")
        local = _run_pass("local", dev, inputs, out_t, listener, "off")
        cfg = board.configure(dev, mode=opts.mode, **remote)
        loaded = load_model()
        offl_mode = loaded.raw.get("offload", opts.mode)
        if offl_mode != opts.mode:
            reason = loaded.raw.get("offload_error")
            if not reason:
                raise errors.DeviceError(f"the board did not switch offload {opts.mode} and gave no reason",
                                         hint="check that tinyfw/offload is on the board (`tinyhost flash`)")
            warning = (f"WARNING: the board kept offload {offl_mode} ({reason}); the second pass runs locally too"
                       + (". Use a smaller model or a board with more RAM to offload" if "out of memory" in reason
                          else ""))
            listener.message(f"offload: {warning}")
        else:
            listener.message(f"offload: offloaded pass (mode {opts.mode}) to {address}, model id {model_id}")
        offl = _run_pass("offload", dev, inputs, out_t, listener, offl_mode)
        reference = None
        if local_server is None or opts.reference_model:
            try:
                reference = _reference_outputs(address, model_id, inputs, in_t, device_id,
                                               bytes.fromhex(key) if key else None)
            except errors.TinyhostError as e:
                listener.message(f"offload: no agreement figures: the server's reference model did not answer "
                                 f"({e.message})")
    finally:
        try:
            board.restore_config(dev, previous)
            load_model()        # the board takes its own config again and closes its connection to our server
        except errors.TinyhostError as e:
            log.warning("could not restore the board's offload state after the run: %s", e)
        finally:
            if local_server is not None:
                local_server.stop()
    passes = [_summarise_pass("local", "off", *local, board_profile, cfg["transport"], opts.link_rate_bps,
                              local_time),
              _summarise_pass("offload", offl_mode, *offl, board_profile, cfg["transport"], opts.link_rate_bps,
                              local_time)]
    passes[1].agreement_with_local = _agreement(offl[1], local[1], out_t)
    if reference is not None:
        for p, outs in zip(passes, (local[1], offl[1])):
            p.agreement = _agreement(outs, reference, out_t)
    note = (f"{warning}. " if warning else "") + ("board clock for every stage; the server's queue and compute times come from its replies. "
            "Energy is an estimate from the board profile's datasheet currents and the measured stage times.")
    return OffloadResult(server=address, server_started=local_server is not None, model_id=model_id,
                         reference=reference is not None, transport=cfg["transport"],
                         link_rate_bps=opts.link_rate_bps, inputs_source=source, passes=passes, note=note)
