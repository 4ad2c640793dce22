"""``tinyhost bench --offload``: the same inputs through the board's INFER twice -- offload off, then on (or auto)
-- and, with ``--split``, a third time split (tinyhost.split: the board runs the head, the server the tail); the
passes side by side: latency by stage, accuracy, agreement with the server's reference model,
correct predictions per second, an energy estimate with radio time, fallbacks and retries.

The board decides each answer itself (device/tinyfw/cmd_model.py reads /offload.json); the host only switches the
config between passes (and puts the board's own config back afterwards) and asks INFER for its offload record
(``tinyhost.offload.board.infer_with_info``). Without ``--server`` an in-process server on 127.0.0.1 serves the
benchmarked model for the run.
"""

import logging
import time
from dataclasses import asdict, dataclass, replace

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
    split: object = None           # a split pass too: the split point (int) or "auto"; mode "split": only that one


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


def _answers(dev, inputs, out_tensor, script):
    """(output, mode, OffloadRecord) per input: through the runtime's INFER, or with ``script`` (the model's path
    on the board: inputs larger than one frame) through the board's Predictor in one script run
    (tinyhost.offload.board.run_predictions: the board's /offload.json, a fresh heap)."""
    from ..offload import board
    from ..offload.metrics import OffloadRecord

    if script is None:
        for _, _, data in inputs:
            r = board.infer_with_info(dev, data, out_tensor.nbytes)
            yield r.output, r.mode, r.record
        return
    run = board.run_predictions(dev, script, [data for _, _, data in inputs])
    for out, info in zip(run.outputs, run.records):
        yield out, run.counters["mode"], OffloadRecord.from_info(info)


def _run_pass(name, dev, inputs, out_tensor, listener, pass_mode, script=None):
    samples, outputs, records = [], [], []
    t0 = time.monotonic()
    answers = _answers(dev, inputs, out_tensor, script)
    for done, ((index, label, _), (output, mode, record)) in enumerate(zip(inputs, answers), 1):
        if mode != pass_mode:
            raise errors.DeviceError(f"the board answered in offload mode {mode!r}, expected {pass_mode!r}",
                                     hint="the board did not take its /offload.json; check `tinyhost offload "
                                          "status` and that its tinyfw has tinyfw/offload")
        predicted = _predicted(output, out_tensor)
        outputs.append(output)
        records.append(record)
        sample = {"index": index, "label": label, "predicted": predicted, "output": output.hex()}
        sample.update(asdict(record))
        samples.append(sample)
        listener.offload_sample(name, done, len(inputs), sample)
    return samples, outputs, records, time.monotonic() - t0


def _summarise_pass(name, mode, samples, outputs, records, wall_s, board_profile, transport, link_rate_bps,
                    local_time=None, head_time=None):
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
                                          board_profile, head_time).to_dict()
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

    if opts.mode not in ("on", "auto", "split"):
        raise errors.UsageError(f"--offload-mode must be on or auto, not {opts.mode!r}")
    if opts.mode == "split" and opts.split is None:
        raise errors.UsageError("a split pass needs its split point", hint="add --split K or --split auto")
    model_id = opts.model_id or models.resolve_model(str(model_path))[0]
    dev.soft_reset()                # the config is read on a clean heap: a large model loaded leaves HASH no room
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
    warnings = []
    split_plan = head_time = split_k = None
    runs = []                       # (pass name, mode it ran in, _run_pass's figures)

    script = None                   # inputs larger than one frame: the model's path on the board (_answers)

    def switched(mode, **fields):
        # the board's config for the next pass, loaded; the mode the board runs it in
        cfg = board.configure(dev, mode=mode, **remote, **fields)
        if script is not None:      # the Predictor runs in a script of its own: it reads the file there
            return cfg, mode
        loaded = load_model()
        got = loaded.raw.get("offload", mode)
        if got != mode:
            reason = loaded.raw.get("offload_error")
            if not reason:
                raise errors.DeviceError(f"the board did not switch offload {mode} and gave no reason",
                                         hint="check that tinyfw/offload is on the board (`tinyhost flash`)")
            warning = (f"WARNING: the board kept offload {got} ({reason}); the {mode} pass runs locally too"
                       + (". Use a smaller model or a board with more RAM to offload" if "out of memory" in reason
                          else ""))
            warnings.append(warning)
            listener.message(f"offload: {warning}")
        else:
            listener.message(f"offload: {mode} pass to {address}, model id {model_id}")
        return cfg, got

    try:
        board.configure(dev, mode="off")
        info = load_model()
        in_t, out_t = info.inputs[0], info.outputs[0]
        inputs, source = _inputs(ds, opts, in_t, benchmark)
        if in_t.nbytes > dev.link.max_payload:
            from ..flash import model_remote_path

            script = model_remote_path(model_path, board_profile)
            dev.soft_reset()        # no model in the runtime: the inputs file and configs need its heap
            listener.message(f"offload: the input ({in_t.nbytes} B) is larger than one frame of this board: each "
                             f"pass runs the board's Predictor over all inputs in one script (a fresh heap)")
        listener.message(f"offload: local pass over {len(inputs)} inputs ({source})")
        local = _run_pass("local", dev, inputs, out_t, listener, "off", script)
        if opts.mode != "split":
            cfg, offl_mode = switched(opts.mode)
            runs.append(("offload", offl_mode, _run_pass("offload", dev, inputs, out_t, listener, offl_mode,
                                                         script)))
        if opts.split is not None:
            split_cfg, split_plan, split_k = _split_setup(model_path, opts.split, board_profile, model_id,
                                                          listener)
            if local_time is not None:
                head_ns = sum(s.ns for s in local_time.steps[:split_k]) + local_time.overhead_ns
                head_time = replace(local_time, total_ns=head_ns, total_us=head_ns / 1000,
                                    steps=local_time.steps[:split_k])
            cfg, split_mode = switched("split", split=split_cfg)
            runs.append(("split", split_mode, _run_pass("split", dev, inputs, out_t, listener, split_mode,
                                                        script)))
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
                              local_time)]
    for name, mode, figures in runs:
        p = _summarise_pass(name, mode, *figures, board_profile, cfg["transport"], opts.link_rate_bps, local_time,
                            head_time if name == "split" else None)
        p.agreement_with_local = _agreement(figures[1], local[1], out_t)
        p.identical_to_local = sum(a == b for a, b in zip(figures[1], local[1]))
        if name == "split":
            p.split_at = split_k
        passes.append(p)
    if reference is not None:
        for p, outs in zip(passes, [local[1]] + [figures[1] for _, _, figures in runs]):
            p.agreement = _agreement(outs, reference, out_t)
    note = "".join(f"{w}. " for w in warnings) + ("board clock for every stage; the server's queue and compute times come from its replies. "
            "Energy is an estimate from the board profile's datasheet currents and the measured stage times.")
    return OffloadResult(server=address, server_started=local_server is not None, model_id=model_id,
                         reference=reference is not None, transport=cfg["transport"],
                         link_rate_bps=opts.link_rate_bps, inputs_source=source, passes=passes, note=note,
                         split_plan=split_plan)


def _auto_note(at, k, plan):
    """Why --split auto ran k: the plan's best, or the best inside the model when the plan's best is an end."""
    if at != "auto":
        return ""
    if k == plan.best_k:
        return f" (auto: the plan's best for {plan.link})"
    end = "full offload" if plan.best_k == 0 else "local"
    return (f" (auto: the plan's best for {plan.link} is k = {plan.best_k}, {end}, which the offloaded or local "
            "pass runs; this is the best split point inside the model)")


def _split_setup(model_path, at, board_profile, model_id, listener):
    """(the config's split field, the plan for the board's link as a dict, the split point run) for a split
    pass: the plan (tinyhost.split) for the board profile over the link its tcp transport uses."""
    from ..linkmodel import for_transport
    from ..split import build_plan, split_config

    link = for_transport("tcp", board_profile).name
    split_cfg, plans = split_config(model_path, at, link, board_profile.name, "latency", model_id)
    plan = plans.get(link) or build_plan(model_path, board_profile.name, link, "latency", model_id)
    k = split_cfg["best"][link] if at == "auto" else at
    listener.message(f"offload: split at k = {k} of {len(plan.rows) - 1} operators" + _auto_note(at, k, plan))
    return split_cfg, plan.to_dict(), k
