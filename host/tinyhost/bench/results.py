"""Result dataclasses of ``tinyhost bench`` and their JSON and CSV forms, with full provenance.

Reports and tests read these dataclasses (or the JSON written from them), never the printed text. Every raw figure
is kept: each window's inference count and device-clock time, each inference's latency when the DUT streams them,
and each sample's label, prediction, score and latency.
"""

import csv
import io
import json
from dataclasses import asdict, dataclass, field, fields

from ..atomic import write_bytes_atomic
from ..board import Provenance  # noqa: F401  (results carry the board layer's provenance)

SCHEMA = "tinyhost-bench/1"


@dataclass
class Window:
    input_index: int                # which of the (5) inputs
    warmups: int
    inferences: int
    elapsed_us: int                 # device clock, first inference start to last inference end
    inferences_per_s: float
    times_us: list = field(default_factory=list)   # each inference, when the DUT reports them


@dataclass
class PerformanceResult:
    window_s: float                 # minimum window length asked for
    min_inferences: int
    windows: list                   # of Window
    median_inferences_per_s: float
    median_latency_us: float
    min_inferences_per_s: float
    max_inferences_per_s: float
    spread_pct: float               # (max - min) / median between windows
    latency: dict = None            # LatencyStats fields over all single inferences, None when unavailable
    latency_source: str = ""        # where the single-inference latencies come from
    # A virtual board: the time one inference takes on the board it stands for, from the board-time model (an
    # estimate, the same on every run and host; tinyhost.boardtime). The fields above are then the host's time.
    board_time_us: float = None
    board_inferences_per_s: float = None
    board_time_model: str = ""      # e.g. "bt-2"
    board_time: dict = None         # tinyhost.boardtime.BoardTime fields: steps, overhead, backend, weights


@dataclass
class SampleResult:
    index: int                      # item index (journal key)
    file: str
    window: int
    label: int
    predicted: int                  # argmax (classification); -1 for anomaly detection
    score: float                    # top score (classification) or anomaly score (MSE)
    time_us: int                    # device clock
    output: list = field(default_factory=list)    # dequantized output vector


@dataclass
class AccuracyResult:
    benchmark: str
    n_items: int                    # inferences
    n_files: int
    metric: str                     # "top1" or "auc"
    value: float                    # the score compared with the target
    target: float = None
    meets_target: bool = None
    top_k: dict = field(default_factory=dict)     # {"1": acc, "5": acc}
    auc: float = None
    class_names: list = field(default_factory=list)
    per_class: list = field(default_factory=list)  # [{"index", "name", "support", "precision", "recall"}]
    confusion: list = field(default_factory=list)  # confusion[true][predicted]
    samples: list = field(default_factory=list)    # of SampleResult
    file_scores: list = field(default_factory=list)  # ad01: [{"file", "label", "score"}]
    board_resets: int = 0
    resumed_items: int = 0          # items taken from the journal of an earlier, interrupted run
    wall_s: float = 0.0
    device_time_s: float = 0.0
    input_bytes: int = 0


@dataclass
class MemoryResult:
    model_bytes: int
    arena_bytes: int = None
    weights_ram_bytes: int = None
    heap_total_bytes: int = None
    heap_free_bytes: int = None     # free heap with the model loaded
    heap_peak_bytes: int = None     # peak heap use during inference
    source: str = ""


@dataclass
class EnergyResult:
    kind: str                       # "estimate" or "measured"
    uj_per_inference: float
    inputs: dict = field(default_factory=dict)     # every figure the number is computed from
    sources: list = field(default_factory=list)    # where those figures come from
    note: str = ""


@dataclass
class OffloadPass:
    """One pass of ``bench --offload`` over the inputs: "local" (offload off), "offload" (on / auto) or "split"."""
    name: str                       # local | offload | split
    mode: str                       # the board's offload mode during the pass (off, on, auto, split)
    requests: int
    offloaded: int                  # answers that came from the server
    fallbacks: int                  # offload wanted, answered locally (timeout, refusal, broken link, server down)
    retries: int
    errors: dict = field(default_factory=dict)    # error code (str) -> count; codes in docs/offload.md
    sources: dict = field(default_factory=dict)   # local / model / reference -> answers
    latency: dict = field(default_factory=dict)   # stage -> LatencyStats fields (board clock, µs)
    board_time_s: float = 0.0       # sum of the predictions' end-to-end times (board clock)
    host_wall_s: float = 0.0        # the whole pass seen from the host, serial link included
    correct: int = None             # against ground truth (with --dataset)
    accuracy: float = None
    correct_per_s: float = None     # correct / board_time_s
    agreement: dict = None          # with the server's reference model: count, top1, top3, mean_abs_confidence_diff
    agreement_with_local: dict = None   # offload pass: with the local pass's answers
    energy: dict = None             # offload.metrics.EnergyEstimate fields (an estimate)
    samples: list = field(default_factory=list)   # per input: index, label, predicted, output (hex), record fields
    board_time: dict = None         # a virtual board: tinyhost.linkmodel.OffloadBoardTime fields (estimates)
    identical_to_local: int = None  # offload and split passes: answers byte for byte the local pass's
    split_at: int = None            # split pass: the split point k (operators [0, k) on the board)


@dataclass
class OffloadResult:
    server: str                     # HOST:PORT the board talked to
    server_started: bool            # True: started in-process by this run (no --server given)
    model_id: str
    reference: bool                 # the server has a reference model (agreement figures are against it)
    transport: str
    link_rate_bps: int              # radio airtime in the energy estimate
    inputs_source: str
    passes: list = field(default_factory=list)   # of OffloadPass: local, then offload and/or split
    note: str = ""
    split_plan: dict = None         # with a split pass: tinyhost.split.SplitPlan fields for the board and its link


@dataclass
class BenchResult:
    provenance: Provenance
    performance: PerformanceResult = None
    accuracy: AccuracyResult = None
    memory: MemoryResult = None
    energy: EnergyResult = None
    schema: str = SCHEMA
    offload: OffloadResult = None   # tinyhost bench --offload: local and offloaded passes side by side

    def to_dict(self):
        return asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=1, allow_nan=True)

    @classmethod
    def from_dict(cls, d):
        def build(kind, value, nested=None):
            if value is None:
                return None
            known = {f.name for f in fields(kind)}
            kwargs = {k: v for k, v in value.items() if k in known}
            for key, sub in (nested or {}).items():
                if kwargs.get(key) is not None:
                    kwargs[key] = [build(sub, v) for v in kwargs[key]]
            return kind(**kwargs)

        return cls(provenance=build(Provenance, d["provenance"]),
                   performance=build(PerformanceResult, d.get("performance"), {"windows": Window}),
                   accuracy=build(AccuracyResult, d.get("accuracy"), {"samples": SampleResult}),
                   memory=build(MemoryResult, d.get("memory")), energy=build(EnergyResult, d.get("energy")),
                   schema=d.get("schema", SCHEMA),
                   offload=build(OffloadResult, d.get("offload"), {"passes": OffloadPass}))

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))


_PROVENANCE_COLUMNS = [f.name for f in fields(Provenance) if f.name != "files_flashed"]   # one value each
_RECORD_COLUMNS = ["record", "metric", "value", "window", "seq", "sample", "file", "segment", "label",
                   "predicted", "score", "time_us", "inferences", "elapsed_us", "source"]


def csv_rows(result):
    """Long-format rows: one per summary figure, window, single inference and sample; provenance on each."""
    prov = asdict(result.provenance)
    base = {k: prov[k] for k in _PROVENANCE_COLUMNS}

    def row(**kw):
        r = dict(base)
        r.update({k: "" for k in _RECORD_COLUMNS})
        r.update(kw)
        return r

    rows = []
    perf = result.performance
    if perf:
        for name in ("median_inferences_per_s", "median_latency_us", "min_inferences_per_s",
                     "max_inferences_per_s", "spread_pct"):
            rows.append(row(record="summary", metric=f"performance.{name}", value=getattr(perf, name)))
        for name, value in (perf.latency or {}).items():
            rows.append(row(record="summary", metric=f"latency.{name}", value=value))
        if perf.board_time_us is not None:
            for name in ("board_time_us", "board_inferences_per_s"):
                rows.append(row(record="summary", metric=f"performance.{name}.estimate.{perf.board_time_model}",
                                value=getattr(perf, name)))
        for w_index, w in enumerate(perf.windows):
            rows.append(row(record="window", window=w_index, sample=w.input_index, value=w.inferences_per_s,
                            inferences=w.inferences, elapsed_us=w.elapsed_us))
            for seq, t in enumerate(w.times_us):
                rows.append(row(record="inference", window=w_index, seq=seq, time_us=t))
    acc = result.accuracy
    if acc:
        rows.append(row(record="summary", metric=f"accuracy.{acc.metric}", value=acc.value))
        for k, v in acc.top_k.items():
            rows.append(row(record="summary", metric=f"accuracy.top{k}", value=v))
        if acc.auc is not None:
            rows.append(row(record="summary", metric="accuracy.auc", value=acc.auc))
        for s in acc.samples:
            rows.append(row(record="sample", sample=s.index, file=s.file, segment=s.window, label=s.label,
                            predicted=s.predicted, score=s.score, time_us=s.time_us))
    if result.memory:
        for name, value in asdict(result.memory).items():
            if value is not None and name != "source":
                rows.append(row(record="summary", metric=f"memory.{name}", value=value))
    if result.energy:
        rows.append(row(record="summary", metric=f"energy.uj_per_inference.{result.energy.kind}",
                        value=result.energy.uj_per_inference))
    if result.offload:
        rows.extend(_offload_rows(result.offload, row))
    return rows


def _offload_rows(off, row):
    rows = []
    for p in off.passes:
        def figure(name, value):
            if value is not None:
                rows.append(row(record="offload", metric=f"offload.{p.name}.{name}", value=value))
        for name in ("requests", "offloaded", "fallbacks", "retries", "board_time_s", "host_wall_s", "correct",
                     "accuracy", "correct_per_s"):
            figure(name, getattr(p, name))
        for stage, stats in p.latency.items():
            for q in ("p50_us", "p90_us", "p99_us"):
                figure(f"latency.{stage}.{q}", stats[q])
        for key in ("agreement", "agreement_with_local"):
            for name, value in (getattr(p, key) or {}).items():
                figure(f"{key}.{name}", value)
        if p.energy:
            figure("energy.uj_per_inference.estimate", p.energy["uj_per_inference"])
        for code, n in p.errors.items():
            figure(f"errors.{code}", n)
        for s in p.samples:
            rows.append(row(record="offload_sample", metric=f"offload.{p.name}", sample=s["index"],
                            label=s.get("label", ""), predicted=s.get("predicted", ""), source=s.get("source", ""),
                            time_us=s.get("total_us", "")))
    return rows


def csv_cell(value):
    """A text cell that a spreadsheet would run as a formula (it starts with = + - @, a tab or a carriage return)
    gets a leading ' (OWASP's rule), unless it is a plain number: a sample named ``=HYPERLINK(...)`` stays text."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


def to_csv(result):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_PROVENANCE_COLUMNS + _RECORD_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in csv_rows(result))
    return out.getvalue()


def write_atomic(path, data):
    """Write ``data`` (str or bytes) through a temporary file and a rename: never half-written."""
    write_bytes_atomic(path, data.encode() if isinstance(data, str) else data)


def write_json(result, path):
    write_atomic(path, result.to_json() + "\n")


def write_csv(result, path):
    write_atomic(path, to_csv(result))
