"""One ``tinyhost bench`` run from options to a BenchResult: open the board, put and load the model, run the
modes asked for, with provenance. The CLI only parses options, prints events and writes files."""

import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__, errors
from ..hashing import sha256_file
from . import datasets, energy, runner
from .journal import Journal, default_path
from .results import BenchResult, Provenance

log = logging.getLogger(__name__)

MODES = ("performance", "accuracy", "memory", "energy", "all")


@dataclass
class BenchOptions:
    model: str
    mode: str = "performance"
    board: str = None
    port: str = None
    baud: int = None
    state_dir: str = None
    dataset: str = None
    dut: str = "tinyhost"
    backend: str = "auto"
    window_s: float = runner.MLPERF_WINDOW_S
    min_inferences: int = runner.MLPERF_MIN_INFERENCES
    warmups: int = 1
    inputs: int = runner.MLPERF_INPUTS
    resume: bool = False
    journal: str = None
    limit: int = None                  # accuracy: only the first N items (a quick check; not a full score)
    energy_meter: str = "none"         # "none" (estimate) or "joulescope"
    timeout_s: float = 5.0
    extra: dict = field(default_factory=dict)
    offload: object = None             # bench.offload.OffloadOptions: also run local vs offloaded passes


def resolve_model(spec, dut):
    """(local path or None, benchmark id guess). With --dut eembc, a bare benchmark id (kws01) is enough."""
    from .. import zoo

    try:
        return Path(zoo.resolve(spec)), ""
    except errors.TinyhostError:
        if dut == "eembc" and spec in datasets.BENCHMARKS:
            return None, spec
        raise


def _modes(mode):
    if mode not in MODES:
        raise errors.UsageError(f"unknown mode {mode!r}", hint=f"choose one of {', '.join(MODES)}")
    return ("performance", "accuracy", "memory", "energy") if mode == "all" else (mode,)


def _load_dataset(opts, benchmark, input_tensor=None, model_sha=""):
    if not opts.dataset:
        return None
    ds = datasets.load(opts.dataset, benchmark)
    if input_tensor is not None:
        ds.input_quant = (input_tensor.scale, input_tensor.zero_point)
    if ds.layout == "wav":
        from .. import features, zoo

        official = zoo.find("kws01")
        if official is not None and model_sha == official.sha256:
            ds.mfcc_config = features.MLPERF_KWS01
    if opts.limit:
        ds.items = ds.items[:opts.limit]
        ds.files = sorted({it.file for it in ds.items})
    return ds


def _performance_inputs(opts, ds, nbytes, convert):
    if ds is not None:
        return [convert(ds.read(item)) for item in runner.pick_inputs(ds, opts.inputs)], "dataset"
    return runner.synthetic_inputs(nbytes, opts.inputs), "synthetic (pseudo-random bytes)"


def run(opts, listener=None):
    """Run the benchmark described by ``opts``; returns a BenchResult."""
    from ..ports import open_target

    listener = listener or runner.Listener()
    modes = _modes(opts.mode) if opts.mode or not opts.offload else ()   # --offload alone: only its passes
    if opts.offload is not None and opts.dut != "tinyhost":
        raise errors.UsageError("--offload needs the tinyhost DUT (the board's offload runs inside tinyfw)",
                                hint="leave out --dut eembc")
    if "accuracy" in modes and not opts.dataset:
        if opts.mode == "all":
            modes = tuple(m for m in modes if m != "accuracy")
            listener.message("no --dataset: accuracy is left out")
        else:
            raise errors.UsageError("accuracy mode needs a test set", hint="pass --dataset DIR")
    if opts.dut not in ("tinyhost", "eembc"):
        raise errors.UsageError(f"unknown --dut {opts.dut!r}", hint="use tinyhost or eembc")
    model_path, benchmark = resolve_model(opts.model, opts.dut)
    with open_target(opts.board, opts.port, opts.baud, state_dir=opts.state_dir) as tgt:
        baud = opts.baud or tgt.board.baud
        prov = Provenance(board=tgt.board.name, virtual=tgt.virtual, port=tgt.port, baud=baud, dut=opts.dut,
                          tinyhost_version=__version__, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          host=f"{platform.node()} {platform.machine()} Python {platform.python_version()}")
        if model_path is not None:
            prov.model_path = str(model_path)
            prov.model_sha256 = sha256_file(model_path)
            prov.model_bytes = model_path.stat().st_size
        if tgt.virtual:
            _flash_virtual(tgt, opts, listener)
        if opts.dut == "eembc":
            target = _eembc_target(opts, tgt, prov, benchmark)
        else:
            target = _tinyhost_target(opts, tgt, prov, model_path)
        try:
            return _run_modes(opts, modes, target, tgt, prov, listener)
        finally:
            target.close()


def _flash_virtual(tgt, opts, listener):
    """A virtual board started for this command gets the firmware files (only those that differ)."""
    from .. import flash
    from ..client import Device

    with Device.open(tgt.port, baud=opts.baud, timeout_s=opts.timeout_s) as dev:
        report = flash.flash_items(dev, flash.firmware_items(board=tgt.board), tgt.board)
    sent = getattr(report, "sent", None)
    if sent:
        listener.message(f"virtual board: put {len(sent)} firmware files on its flash")


def _tinyhost_target(opts, tgt, prov, model_path):
    from .. import flash
    from ..client import Device

    remote = flash.model_remote_path(model_path, tgt.board)

    board_info = []

    def connect():
        dev = Device.open(tgt.port, baud=opts.baud, timeout_s=opts.timeout_s)
        try:
            # the model and its load plan, only if they differ; the board is soft-reset after an upload
            flash.put_models(dev, [model_path], tgt.board)
            # The board's own report before the model takes the heap: on a 100 KB board the INFO command's
            # code may not fit beside a loaded model. Then a soft reset, so the model gets an unfragmented heap.
            board_info[:] = [dev.info()]
            dev.soft_reset()
            info = dev.load_model(remote, backend=opts.backend)
        except BaseException:
            dev.close()
            raise
        return dev, info

    target = runner.TinyhostTarget(connect, board_info=lambda: board_info[0])
    info = board_info[0]
    model = target.model_info
    prov.firmware_version = str(getattr(info, "firmware_version", ""))
    prov.firmware_hash = str(getattr(info, "firmware_hash", ""))
    prov.micropython_version = str(getattr(info, "micropython_version", ""))
    prov.machine = str(getattr(info, "machine", ""))
    prov.dut_name = "tinyfw"
    if getattr(info, "virtual", False):          # the firmware knows it runs on the virtual board
        prov.virtual = True
        if getattr(info, "emulates", ""):
            prov.board = info.emulates
    prov.backend = str(getattr(model, "backend", ""))
    prov.benchmark = datasets.benchmark_for_input(model.inputs[0].shape)
    target.anomaly = prov.benchmark == "ad01"
    return target


def _eembc_target(opts, tgt, prov, benchmark):
    from .eembc_host import EembcDut, EembcTarget

    def reopen():
        return EembcDut(tgt.port, baud=prov.baud, timeout_s=opts.timeout_s)

    dut = reopen()
    try:
        prov.dut_name = dut.sync()
        prov.firmware_version, model_id = dut.profile()
        prov.benchmark = eembc_benchmark(model_id, benchmark, tgt.port)
    except BaseException:
        dut.close()
        raise
    return EembcTarget(dut, prov.benchmark, reopen=reopen)


def eembc_benchmark(model_id, benchmark, port):
    """The benchmark a DUT runs, from its ``profile`` answer (``m-model-[...]``) and the one --model names ("" when
    it names a file; then the --dataset's is taken). DeviceError when the DUT has no model at all."""
    if model_id == "none":         # tinyfw: nothing loaded and no model to load by itself
        raise errors.DeviceError(f"the DUT on {port} has no model: none is loaded and the board names none to load",
                                 hint="with tinyhost's firmware: `tinyhost flash --model NAME --boot-model NAME`")
    if model_id in datasets.BENCHMARKS:
        if benchmark and benchmark != model_id:
            raise errors.UsageError(f"the DUT runs {model_id}, not {benchmark}",
                                    hint="pass the model the firmware was built with")
        return model_id
    return benchmark               # "unknown" or not said: --model's benchmark, else the --dataset's


def _run_modes(opts, modes, target, tgt, prov, listener):
    result = BenchResult(provenance=prov)
    input_tensor = getattr(target, "input_tensor", None)
    ds = _load_dataset(opts, prov.benchmark, input_tensor, prov.model_sha256)
    if ds is not None:
        prov.dataset_path = str(ds.root)
        prov.dataset_sha256 = ds.fingerprint()
        if not prov.benchmark:
            prov.benchmark = ds.benchmark
    if opts.dut == "eembc":
        nbytes = 4 * 640 if prov.benchmark == "ad01" else datasets.SAMPLE_FORMAT.get(prov.benchmark, ("", 0))[1]

        def convert(raw):
            return raw
    else:
        nbytes = input_tensor.nbytes

        def convert(raw):
            return datasets.to_model_input(raw, ds.sample_dtype, input_tensor)
    if not nbytes:
        raise errors.UsageError("cannot tell the DUT's input size", hint="pass --dataset DIR")
    if "performance" in modes or ("energy" in modes and "performance" not in modes):
        inputs, source = _performance_inputs(opts, ds, nbytes, convert)
        if "performance" not in modes:        # energy alone: one short window gives the latency
            inputs = inputs[:1]
        listener.message(f"performance: {len(inputs)} inputs ({source})")
        latency_source = ("each inference of the windows, device clock" if opts.dut == "tinyhost"
                          else "separate `infer 1 0` commands, device clock (the EEMBC protocol times windows only)")
        perf = runner.run_performance(target, inputs, opts.window_s, opts.min_inferences, opts.warmups, listener,
                                      latency_source=latency_source)
        if "performance" in modes:
            result.performance = perf
        latency_us = perf.latency["p50_us"] if perf.latency else perf.median_latency_us
    if "accuracy" in modes:
        identity = {"model_sha256": prov.model_sha256 or prov.benchmark, "dataset_sha256": ds.fingerprint(),
                    "benchmark": ds.benchmark, "n_items": len(ds.items), "board": prov.label, "dut": opts.dut}
        path = Path(opts.journal) if opts.journal else default_path(identity)
        listener.message(f"accuracy: {len(ds.items)} inferences; journal {path}")
        with Journal.open(path, identity, resume=opts.resume) as journal:
            result.accuracy = runner.run_accuracy(target, ds, journal, listener)
    if "memory" in modes:
        result.memory = target.memory(prov.model_bytes)
    if "energy" in modes:
        if opts.energy_meter == "joulescope":
            result.energy = energy.measure_with_joulescope(
                lambda n: target.window(inputs[0], 0, n, 0), latency_us)
        else:
            result.energy = energy.estimate(tgt.board, latency_us, virtual=prov.virtual)
    if opts.offload is not None:
        result.offload = _run_offload(opts, target, tgt, prov, ds, listener)
    return result


def _run_offload(opts, target, tgt, prov, ds, listener):
    from .. import flash
    from .offload import run_offload

    remote = flash.model_remote_path(prov.model_path, tgt.board)

    def load_model():
        target.model_info = target.dev.load_model(remote, backend=opts.backend)
        return target.model_info

    return run_offload(target.dev, load_model, Path(prov.model_path), ds, prov.benchmark, tgt.board, opts.offload,
                       listener)
