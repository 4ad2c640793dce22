"""One ``tinyhost bench`` run from options to a BenchResult: open the board, put and load the model, run the
modes asked for, with provenance. The CLI only parses options, prints events and writes files."""

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .. import board, errors
from . import datasets, energy, runner
from .journal import Journal, default_path
from .results import BenchResult

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
    calibration: str = None            # a virtual board's board time from this calibration file (tinyhost calibrate)


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


def _load_dataset(opts, benchmark, input_tensor=None, model_sha="", listener=None, output_tensor=None):
    from .. import features, zoo

    if not opts.dataset:
        return None
    ds = datasets.load(opts.dataset, benchmark)
    if input_tensor is not None:
        if input_tensor.dtype == "float32" and ds.layout == "wav":
            ds.sample_dtype = "float32"          # a float-input model gets the float features
        else:
            ds.input_quant = (input_tensor.scale, input_tensor.zero_point)
    known = zoo.entry_with_sha256(model_sha)
    model_mfcc = features.MODEL_FRONT_ENDS.get(known.name) if known is not None else None
    if ds.layout == "wav" and model_mfcc is not None:
        ds.mfcc_config = model_mfcc
    reasons = datasets.feature_mismatches(ds.feature_settings, model_mfcc, input_tensor)
    if reasons and listener is not None:
        made_for = ds.feature_settings.made_for
        listener.message(f"warning: the test set {ds.root}{f' (made for {made_for})' if made_for else ''} does not "
                         f"fit {known.name if known else 'this model'}: {'; '.join(reasons)}. Its score says little "
                         "about the model; give the model's own test set, or WAV files (features are then computed "
                         "as the model expects)")
    if opts.limit:
        ds.items = ds.items[:opts.limit]
        ds.files = sorted({it.file for it in ds.items})
    outputs = None
    if output_tensor is not None:
        outputs = 1
        for d in output_tensor.shape:
            outputs *= d
    ds.check(outputs)           # before the first inference: a bad file stops the run here, named
    return ds


def _performance_inputs(opts, ds, nbytes, convert, dtype="int8"):
    if ds is not None:
        return [convert(ds.read(item)) for item in runner.pick_inputs(ds, opts.inputs)], "dataset"
    if dtype == "float32":
        return runner.synthetic_inputs(nbytes, opts.inputs, dtype=dtype), "synthetic (pseudo-random float32 values)"
    return runner.synthetic_inputs(nbytes, opts.inputs), "synthetic (pseudo-random bytes)"


def run(opts, listener=None):
    """Run the benchmark described by ``opts``; returns a BenchResult."""
    listener = listener or runner.Listener()
    modes = _modes(opts.mode) if opts.mode or not opts.offload else ()   # --offload alone: only its passes
    if opts.offload is not None and opts.dut != "tinyhost":
        raise errors.UsageError("--offload needs the tinyhost DUT (the board's offload runs inside tinyfw)",
                                hint="leave out --dut eembc")
    if "accuracy" in modes and not opts.dataset:
        testset = _shipped_testset(opts.model)
        if testset is not None:
            opts = dataclasses.replace(opts, dataset=str(testset))
            listener.message(f"no --dataset: using the test set shipped with {opts.model}, {testset}")
        elif opts.mode == "all":
            modes = tuple(m for m in modes if m != "accuracy")
            listener.message("no --dataset: accuracy is left out")
        else:
            raise errors.UsageError("accuracy mode needs a test set",
                                    hint="pass --dataset DIR (the shipped models, kws and vww, bring their own)")
    if opts.dut not in ("tinyhost", "eembc"):
        raise errors.UsageError(f"unknown --dut {opts.dut!r}", hint="use tinyhost or eembc")
    model_path, benchmark = resolve_model(opts.model, opts.dut)
    # the EEMBC DUT speaks its own text protocol on the port: the Device is opened only to sync a virtual board
    with board.connect(opts.board, opts.port, opts.baud, state_dir=opts.state_dir, timeout_s=opts.timeout_s,
                       open_device=False) as b:
        prov = b.provenance
        prov.dut = opts.dut
        if opts.calibration:
            if not b.virtual:
                raise errors.UsageError("--calibration gives a virtual board's board time; a real board reports "
                                        "measured time", hint="use it with --board sim or --board sim:NAME")
            from ..calibrate import load

            load(opts.calibration, b.profile)        # a bad file is refused before anything runs
        if model_path is not None:
            prov.record_model(model_path)
        if b.virtual:                            # a virtual board started for this command: firmware that differs
            # with the model in the same pass: a ROMFS partition is then written once, not once without the model
            # and again with it
            models = [model_path] if model_path is not None and opts.dut == "tinyhost" else []
            report, rom = b.flash(model_paths=models)
            sent = len(report.sent) + len(rom.sent if rom else ())
            if sent:
                listener.message(f"virtual board: put {sent} files (firmware{' and model' if models else ''}) on "
                                 "its flash")
        if opts.dut == "eembc":
            b.close()
            target = _eembc_target(opts, b, benchmark)
        else:
            target = _tinyhost_target(opts, b, model_path)
        try:
            return _run_modes(opts, modes, target, b, listener)
        finally:
            target.close()


def _shipped_testset(model):
    """The test set shipped with ``--model`` when it is a shipped model (by name, or its file), else None."""
    from .. import zoo

    try:
        path = Path(zoo.resolve(model)).resolve()
    except errors.TinyhostError:
        return None
    for entry in zoo.SHIPPED:
        if zoo.path_of(entry).resolve() == path:
            return zoo.shipped_testset(entry)
    return None


def _tinyhost_target(opts, b, model_path):
    first = [True]

    def connect():
        if not first[0]:                       # recovery: the board reset or the link broke
            b.reopen()
        first[0] = False
        return b.open(), b.load(model_path, backend=opts.backend)

    target = runner.TinyhostTarget(connect, board_info=lambda: b.board_info)
    prov = b.provenance
    prov.dut_name = "tinyfw"
    prov.benchmark = datasets.benchmark_for_input(target.model_info.inputs[0].shape)
    target.anomaly = prov.benchmark == "ad01"
    return target


def _eembc_target(opts, b, benchmark):
    from .eembc_host import EembcDut, EembcTarget

    prov = b.provenance

    def reopen():
        return EembcDut(b.port, baud=b.baud, timeout_s=opts.timeout_s)

    dut = reopen()
    try:
        prov.dut_name = dut.sync()
        prov.firmware_version, model_id = dut.profile()
        prov.benchmark = eembc_benchmark(model_id, benchmark, b.port)
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


def _run_modes(opts, modes, target, b, listener):
    prov = b.provenance
    result = BenchResult(provenance=prov)
    input_tensor = getattr(target, "input_tensor", None)
    ds = _load_dataset(opts, prov.benchmark, input_tensor, prov.model_sha256, listener,
                       getattr(target, "output_tensor", None))
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
        inputs, source = _performance_inputs(opts, ds, nbytes, convert, getattr(input_tensor, "dtype", "int8"))
        if "performance" not in modes:        # energy alone: one short window gives the latency
            inputs = inputs[:1]
        listener.message(f"performance: {len(inputs)} inputs ({source})")
        latency_source = ("each inference of the windows, device clock" if opts.dut == "tinyhost"
                          else "separate `infer 1 0` commands, device clock (the EEMBC protocol times windows only)")
        perf = runner.run_performance(target, inputs, opts.window_s, opts.min_inferences, opts.warmups, listener,
                                      latency_source=latency_source)
        if "performance" in modes:
            result.performance = perf
        if perf.latency:
            latency_us, latency_name = perf.latency["p50_us"], energy.P50_LATENCY
        else:
            latency_us, latency_name = perf.median_latency_us, "latency at the median throughput"
        board_time = _board_time(b, opts) if prov.virtual else None
        if board_time is not None:
            add_board_time(perf, board_time)
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
                lambda n: target.window(inputs[0], 0, n, 0), latency_us, latency_name=latency_name)
        else:
            result.energy = energy.estimate(b.profile, latency_us, virtual=prov.virtual, latency_name=latency_name,
                                            board_time=board_time if prov.virtual else None)
    if opts.offload is not None:
        result.offload = _run_offload(opts, target, b, ds, listener)
    return result


def _board_time(b, opts):
    """A virtual board's estimated time on the board it stands for (tinyhost.boardtime), None when the model or
    the backend that ran it is unknown (an EEMBC DUT, a backend the model has no coefficients for)."""
    from ..boardtime import for_board

    prov = b.provenance
    if opts.dut != "tinyhost" or not prov.model_path:
        return None
    profile = b.profile
    if opts.calibration:
        from ..calibrate import load

        profile, _ = load(opts.calibration, profile)
    return for_board(prov.model_path, profile, True, prov.backend)


def add_board_time(perf, board_time):
    """Board time beside the host's in a PerformanceResult: one inference's estimate, its rate, the model."""
    perf.board_time_us = board_time.total_us
    perf.board_inferences_per_s = 1e9 / board_time.total_ns
    perf.board_time_model = board_time.model
    perf.board_time = board_time.to_dict()


def _run_offload(opts, target, b, ds, listener):
    from .offload import run_offload

    def load_model():
        target.model_info = b.load(b.provenance.model_path, backend=opts.backend)
        return target.model_info

    local_time = None
    if b.provenance.virtual:
        if b.model_info is None:
            load_model()            # the backend that runs the model decides the board time
        local_time = _board_time(b, opts)
    return run_offload(b.dev, load_model, Path(b.provenance.model_path), ds, b.provenance.benchmark, b.profile,
                       opts.offload, listener, local_time=local_time)
