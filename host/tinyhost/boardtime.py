"""Board time: the estimated time one invoke takes on a board, for a virtual board to report instead of the host's.

``estimate(report, profile, backend, weights)`` counts the work each operator step of one invoke does, exactly, from
the model (:func:`tinyhost.model.inspect`'s report: MACs, output and input elements, filter bytes, kernel calls per
row band, bytes read from flash when weights are streamed or mapped) and multiplies it by the board profile's
cost coefficients (``[board_time]`` in ``boards/*.toml``, each with its source), at the clock the firmware runs
the board at (``[board_time] clock_mhz``: MicroPython leaves an ESP32 at ESP-IDF's default 160 MHz, not 240).

Deterministic: counts are integers, coefficients are held as integer hundredths of a cycle, and the only division
(cycles to nanoseconds at the clock) is an integer one, so the same model, board, backend and weights mode give the
same nanoseconds on every host and every run. Every figure carries :data:`BOARD_TIME_MODEL`; it is an estimate,
never a measurement (docs/board-time.md: how the coefficients were derived, and the model's limits).

``front_end_estimate(config, profile)`` does the same for one frame (one hop) of the board's MFCC front end
(``tinyfw.mfcc``): its work counted exactly from the configuration and the front end's own tables
(:func:`front_end_work`: samples, FFT butterflies, spectrum bins, mel bins, logs, DCT MACs, codes), times the
profile's ``fe_*`` coefficients.
"""

from dataclasses import asdict, dataclass, field
from decimal import Decimal
from functools import lru_cache

from .errors import UsageError

BOARD_TIME_MODEL = "bt-2"
BACKENDS = ("viper", "ref")          # the engine's names: viper kernels, reference (bytecode) kernels
WEIGHTS_MODES = ("ram", "streamed", "mapped")

# Cost coefficients every real board profile gives, in cycles, each with a source (boards.py checks).
COEFFICIENTS = {
    "mac_conv_cycles": "one multiply-accumulate in the viper CONV_2D inner loop (viper_conv.conv_patched)",
    "mac_dw_cycles": "one multiply-accumulate in the viper DEPTHWISE_CONV_2D inner loop (viper_dw.dw_planes)",
    "mac_fc_cycles": "one multiply-accumulate in the viper FULLY_CONNECTED inner loop (viper_ops.fc_rows)",
    "requant_cycles": "requantising and storing one output element of a conv/depthwise/fully-connected kernel",
    "copy_byte_cycles": "one byte copied into the kernel's scratch (receptive-field patches, filter blocks, planes)",
    "elem_cycles": "one input element of an element-wise kernel (pooling, add, softmax, requantize, copy)",
    "call_cycles": "one kernel call from Model.invoke (bytecode dispatch, viper entry converting its arguments)",
    "step_cycles": "one operator step of Model.invoke's loop (bytecode), besides its kernel calls",
    "invoke_cycles": "one invoke, besides its steps",
    "flash_byte_cycles": "one byte of weights read from the filesystem at invoke (weights streamed)",
    "flash_read_cycles": "one read call of streamed weights (VFS, filesystem and flash transaction set-up)",
    "mapped_byte_cycles": "one byte of a filter read in place from memory-mapped flash (weights mapped, ROMFS)",
    "ref_mac_cycles": "one multiply-accumulate of a reference (bytecode) kernel",
    "ref_elem_cycles": "one output or element-wise element of a reference (bytecode) kernel",
    # the MFCC front end on the board (device/tinyfw/mfcc_viper.py), per item of one frame
    "fe_sample_cycles": "one sample of a frame: its share of the gain sum and its window (mfcc_viper.window_gain, "
                        "window)",
    "fe_point_cycles": "one complex FFT point cleared before the window is put in (mfcc_viper.window)",
    "fe_trivial_butterfly_cycles": "one FFT butterfly with the twiddle 1 or -i, no multiply (mfcc_viper.fft)",
    "fe_butterfly_cycles": "one FFT butterfly with a twiddle multiply (mfcc_viper.fft)",
    "fe_twiddle_cycles": "one twiddle factor loaded for the butterflies that use it (mfcc_viper.fft)",
    "fe_bin_cycles": "one spectrum bin: the real-FFT split and the magnitude with its square root "
                     "(mfcc_viper.spectrum)",
    "fe_mel_bin_cycles": "one spectrum bin into its two mel filters (mfcc_viper.mel)",
    "fe_log_cycles": "one mel band's logarithm (mfcc_viper.log_dct)",
    "fe_dct_mac_cycles": "one multiply-accumulate of the DCT (mfcc_viper.log_dct)",
    "fe_code_cycles": "one coefficient's int8 code: the search of the quantisation thresholds (mfcc_viper.log_dct)",
}
# Kernel calls of one frame of the front end (tinyfw.mfcc.Mfcc.frame, bytecode): window_gain, window, fft,
# spectrum, mel, log_dct.
FRONT_END_KERNEL_CALLS = 6

# Operators by the kernel that runs them.
_MAC_KERNELS = {"CONV_2D": "mac_conv_cycles", "DEPTHWISE_CONV_2D": "mac_dw_cycles",
                "FULLY_CONNECTED": "mac_fc_cycles"}
_NO_STEP = ("RESHAPE",)            # the planner aliases the output to the input: the engine builds no step


@dataclass(frozen=True)
class Coefficient:
    centicycles: int                # hundredths of a cycle (exact: parsed from the profile's decimal text)
    source: str

    @property
    def cycles(self):
        return self.centicycles / 100


def centicycles(value):
    """Hundredths of a cycle, exactly, from a profile's number (at most two decimals)."""
    d = Decimal(str(value)) * 100
    if d != d.to_integral_value():
        raise ValueError(f"{value} has more than two decimals")
    return int(d)


@dataclass
class StepTime:
    index: int
    op: str
    us: float                       # ns / 1000 (the ns figure is the exact one)
    ns: int
    work: dict                      # count of each cost term for this step (coefficient name -> count)


@dataclass
class BoardTime:
    """One invoke's estimated time on a board: steps, per-invoke overhead, total. An estimate, not a measurement."""
    model: str                      # BOARD_TIME_MODEL
    board: str
    clock_mhz: int
    backend: str
    weights: str
    total_us: float
    total_ns: int
    overhead_ns: int
    steps: list = field(default_factory=list)   # of StepTime
    kind: str = "estimate"

    @property
    def label(self):
        return f"estimate, board-time model {self.model}"

    def to_dict(self):
        return asdict(self)


def _ns(centi, clock_mhz):
    """Nanoseconds for ``centi`` hundredths of a cycle at ``clock_mhz``, rounded half up, integers only."""
    return (centi * 10 + clock_mhz // 2) // clock_mhz


def _mac_slots(op, kernel):
    """Multiply-accumulates the viper kernel runs: the model's MACs, but a depthwise window of one column (kernel
    (k, 1), no row dilation) runs four taps a step with the weights past k zero (viper_dw.dw_planes)."""
    if kernel == "DEPTHWISE_CONV_2D":
        k_h, k_w = op.params.get("kernel", (0, 0))
        if k_w == 1 and op.params.get("dilation", (1, 1))[0] == 1:
            return op.output_elements * ((k_h + 3) & -4)
    return op.macs


def step_work(op, backend, weights, stream_block_bytes):
    """Counts of each cost term of one operator step (an :class:`tinyhost.model.OpReport`)."""
    if op.op in _NO_STEP:
        return {}
    work = {"step_cycles": 1}
    calls = max(1, op.kernel_calls)
    work["call_cycles"] = calls
    kernel = op.params.get("runs_as", op.op)    # a pointwise CONV_2D runs as the FULLY_CONNECTED it is
    if backend == "ref":
        work["ref_mac_cycles"] = op.macs
        work["ref_elem_cycles"] = op.output_elements if kernel in _MAC_KERNELS else op.input_elements
    elif kernel in _MAC_KERNELS:
        work[_MAC_KERNELS[kernel]] = _mac_slots(op, kernel)
        work["requant_cycles"] = op.output_elements
        if kernel == "CONV_2D":         # a patch of the receptive field per output pixel, the filter per call
            channels = max(1, op.params.get("filters", 1))
            work["copy_byte_cycles"] = op.macs // channels + op.filter_bytes * calls
        else:                           # the input planes (depthwise) or rows (fully connected), once
            work["copy_byte_cycles"] = op.input_elements
    else:
        work["elem_cycles"] = op.input_elements
    if op.filter_bytes:
        if weights == "streamed":       # read again for every row band (KERNELS.md), in blocks of channels
            blocks = -(-op.filter_bytes // stream_block_bytes)
            work["flash_byte_cycles"] = op.filter_bytes * calls
            work["flash_read_cycles"] = blocks * calls
            if kernel != "DEPTHWISE_CONV_2D":   # conv and fully connected: one kernel call per block
                work["call_cycles"] = calls * blocks
        elif weights == "mapped":
            work["mapped_byte_cycles"] = op.filter_bytes * calls
    return work


def estimate(report, profile, backend="viper", weights="ram"):
    """The :class:`BoardTime` of one invoke of the model in ``report`` (a ModelReport) on board ``profile``."""
    if backend not in BACKENDS:
        raise UsageError(f"no board-time model for backend {backend!r}", hint=f"use one of: {', '.join(BACKENDS)}")
    if weights not in WEIGHTS_MODES:
        raise UsageError(f"no board-time model for weights {weights!r}",
                         hint=f"use one of: {', '.join(WEIGHTS_MODES)}")
    coeffs = profile.board_time
    if not coeffs:
        raise UsageError(f"board profile {profile.name} has no [board_time] coefficients",
                         hint="add them to its boards/*.toml file (see docs/board-time.md)")
    clock = profile.board_time_clock_mhz
    steps = []
    total = 0
    for op in report.operators:
        work = step_work(op, backend, weights, report.stream_block_bytes)
        centi = sum(count * coeffs[name].centicycles for name, count in work.items())
        ns = _ns(centi, clock)
        total += ns
        steps.append(StepTime(op.index, op.op, ns / 1000, ns, work))
    overhead = _ns(coeffs["invoke_cycles"].centicycles, clock)
    total += overhead
    return BoardTime(BOARD_TIME_MODEL, profile.name, clock, backend, weights, total / 1000, total, overhead, steps)


def for_board(model_path, profile, virtual, backend):
    """The :class:`BoardTime` of ``model_path`` on ``profile`` with the engine backend that ran it (``viper`` or
    ``ref``; None for another one), weights where ``model inspect`` says the board reads them from."""
    from .model import board_fit, inspect

    if backend not in BACKENDS or not profile.board_time:
        return None
    report = inspect(model_path, board=profile.name, tflm=False)
    return estimate(report, profile, backend, board_fit(report, profile, virtual).weights)


@dataclass
class FrontEndTime:
    """One frame (one hop) of the board's MFCC front end on a board: an estimate, not a measurement."""
    model: str                      # BOARD_TIME_MODEL
    board: str
    clock_mhz: int
    per_frame_us: float             # ns / 1000 (the ns figure is the exact one)
    per_frame_ns: int
    hop_ms: float                   # the hop (stride) it has to keep up with
    ram_bytes: int                  # its tables and work buffers on the board (tinyfw.mfcc.Mfcc.ram_bytes)
    work: dict                      # count of each cost term for one frame
    kind: str = "estimate"

    @property
    def label(self):
        return f"estimate, board-time model {self.model}"

    @property
    def hop_fraction(self):
        """The share of the hop the front end takes (above 1: it cannot keep up)."""
        return self.per_frame_ns / (self.hop_ms * 1e6)

    def to_dict(self):
        return asdict(self)


@lru_cache(maxsize=8)
def device_front_end(config, scale=1.0, zero_point=0, backend="ref"):
    """The board's front end (``tinyfw.mfcc.Mfcc``, run here under CPython) for a
    :class:`tinyhost.features.mfcc.MfccConfig`."""
    from .model import engine_module

    engine_module()                 # puts the firmware directory on the path
    from tinyfw.mfcc import Mfcc

    try:
        return Mfcc(scale, zero_point, sample_rate_hz=config.sample_rate_hz, clip_samples=config.clip_samples,
                    window_samples=config.window_samples, stride_samples=config.stride_samples,
                    fft_size=config.fft_size, mel_bins=config.mel_bins, mel_low_hz=config.mel_low_hz,
                    mel_high_hz=config.mel_high_hz, mfcc_count=config.mfcc_count, log_offset=config.log_offset,
                    backend=backend)
    except ValueError as e:
        raise UsageError(f"the board's front end cannot run this MFCC configuration: {e}",
                         hint="see docs/frontend.md for what it supports") from None


def front_end_work(config):
    """Counts of each cost term of one frame of the board's front end for MFCC configuration ``config``: exact,
    from the configuration and the front end's own tables (every loop of its kernels has a fixed number of steps
    for a configuration, docs/frontend.md)."""
    fe = device_front_end(config)
    n_half = config.fft_size // 2
    stages = n_half.bit_length() - 1
    halves = [1 << s for s in range(stages)]               # butterflies per group in each stage: 1, 2, .. n_half/2
    trivial = sum(n_half // (2 * h) for h in halves) + sum(n_half // (2 * h) for h in halves if h >= 2)
    return {
        "fe_sample_cycles": config.window_samples,
        "fe_point_cycles": n_half,
        "fe_trivial_butterfly_cycles": trivial,
        "fe_butterfly_cycles": n_half // 2 * stages - trivial,
        "fe_twiddle_cycles": sum(h - 2 for h in halves if h >= 2),
        "fe_bin_cycles": fe.bins,
        "fe_mel_bin_cycles": fe.bins,
        "fe_log_cycles": config.mel_bins,
        "fe_dct_mac_cycles": config.mel_bins * config.mfcc_count,
        "fe_code_cycles": config.mfcc_count,
        "call_cycles": FRONT_END_KERNEL_CALLS,
        "step_cycles": 1,
    }


def front_end_estimate(config, profile):
    """The :class:`FrontEndTime` of one frame of the board's front end with ``config`` on board ``profile``."""
    coeffs = profile.board_time
    if not coeffs:
        raise UsageError(f"board profile {profile.name} has no [board_time] coefficients",
                         hint="add them to its boards/*.toml file (see docs/board-time.md)")
    work = front_end_work(config)
    ns = _ns(sum(count * coeffs[name].centicycles for name, count in work.items()), profile.board_time_clock_mhz)
    return FrontEndTime(BOARD_TIME_MODEL, profile.name, profile.board_time_clock_mhz, ns / 1000, ns,
                        1000.0 * config.stride_samples / config.sample_rate_hz, device_front_end(config).ram_bytes,
                        work)
def frontend_hop_ns(model_path, profile):
    """Board time of one hop of the board's MFCC front end for ``model_path`` on ``profile``, in ns (one frame: the
    estimate of :func:`front_end_estimate`); 0 for a model without an MFCC front end (tinyhost.features.mfcc's
    MODEL_FRONT_ENDS, by the model file's name) or a profile without coefficients."""
    from pathlib import Path

    from .features.mfcc import MODEL_FRONT_ENDS

    config = MODEL_FRONT_ENDS.get(Path(model_path).stem)
    if config is None or not profile.board_time:
        return 0
    return front_end_estimate(config, profile).per_frame_ns




def energy_uj(profile, board_time):
    """Energy of one invoke, an estimate: the profile's active current x supply voltage x the board time."""
    return profile.power["active"].current_ma * profile.supply_v * board_time.total_ns / 1e6
