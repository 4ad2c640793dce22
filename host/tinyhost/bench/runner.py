"""The benchmark runs: performance windows, accuracy over a test set with a journal, memory, energy.

The runner talks to a *target*: :class:`TinyhostTarget` (the tinyfw binary protocol, through
``tinyhost.client.Device``) or :class:`~tinyhost.bench.eembc_host.EembcTarget` (any firmware speaking the MLPerf
Tiny text protocol). Both offer the same three operations, so one runner produces the same result dataclasses:

- ``window(data, warmups, min_inferences, window_us, on_timing)`` -> ``(inferences, elapsed_us, times_us)``
- ``infer_item(raw, sample_dtype)`` -> ``ItemOutcome`` (dequantized output or anomaly score, device time)
- ``recover()`` after a transport error: reconnect, reload the model; raises when the board is gone.
- ``model_lost()`` after another error: True when the board reset and forgot its model (then recover() too).

Progress is pushed to a :class:`Listener` as it happens (each timing, each sample); the CLI prints it.
"""

import logging
import math
import time
from dataclasses import dataclass

from .. import errors
from ..errors import BenchInterrupted
from . import metrics
from .datasets import to_model_input
from .results import AccuracyResult, MemoryResult, PerformanceResult, SampleResult, Window

log = logging.getLogger(__name__)

MLPERF_INPUTS = 5              # MLPerf Tiny performance mode: five different inputs
MLPERF_WINDOW_S = 10.0         # ... each timed over at least 10 s
MLPERF_MIN_INFERENCES = 10     # ... and at least 10 inferences


class Listener:
    """Live events of a run. The CLI overrides what it shows; every method may be left as is."""

    def message(self, text):
        log.info(text)

    def timing(self, input_index, seq, time_us):
        """One inference of a performance window finished (device clock)."""

    def window(self, window):
        """A performance window finished (a results.Window)."""

    def sample(self, sample, done, total, running):
        """One accuracy sample finished; ``running`` is {"metric": name, "value": float or None}."""

    def offload_sample(self, pass_name, done, total, sample):
        """``bench --offload``: one prediction of the "local" or "offload" pass finished (a sample dict)."""


@dataclass
class ItemOutcome:
    output: list            # dequantized output vector ([] when the DUT only reports a score)
    score: float            # anomaly score (reconstruction MSE) for ad01, else the top output value
    predicted: int          # argmax, -1 for anomaly detection
    time_us: int
    input_bytes: int        # bytes of input sent over the link for this item


# --- our protocol ----------------------------------------------------------------------------------------------

class TinyhostTarget:
    """tinyfw over the binary protocol. ``connect()`` returns an open Device with the model loaded and its
    ModelInfo, and is called again by recover() after the board reset or the link broke."""

    def __init__(self, connect, anomaly=False, board_info=None):
        self._connect = connect
        self.board_info = board_info      # the board's INFO, taken before the model filled its heap
        self.dev, self.model_info = connect()
        self.anomaly = anomaly
        self.input_tensor = self.model_info.inputs[0]
        self.output_tensor = self.model_info.outputs[0]

    def window(self, data, warmups, min_inferences, window_us, on_timing=None):
        self.dev.set_input(data)
        first = self.dev.invoke(n=1, warmup=warmups).times_us
        estimate_us = max(1, first[0])
        times = []
        while len(times) < min_inferences or sum(times) < window_us:
            left_us = window_us - sum(times)
            n = max(min_inferences - len(times), math.ceil(left_us * 1.02 / estimate_us), 1)
            base = len(times)
            result = self.dev.invoke(n=n, warmup=0, on_timing=(
                (lambda i, us, base=base: on_timing(base + i, us)) if on_timing else None))
            times.extend(result.times_us)
            estimate_us = max(1, sum(times) / len(times))
        return len(times), sum(times), times

    def infer_item(self, raw, sample_dtype):
        data = to_model_input(raw, sample_dtype, self.input_tensor)
        result = self.dev.infer(data)
        out_t = self.output_tensor
        output = metrics.dequantize(result.output, out_t.dtype, out_t.scale, out_t.zero_point)
        if self.anomaly:
            reference = _anomaly_reference(raw, data, sample_dtype, self.input_tensor)
            score = float(((reference - output) ** 2).mean())
            return ItemOutcome([], score, -1, result.time_us, len(data))
        values = [float(v) for v in output]
        best = metrics.argmax(values)
        return ItemOutcome(values, values[best], best, result.time_us, len(data))

    def model_lost(self):
        """True when the board answers but has no model loaded any more: it reset since the model was loaded."""
        try:
            return not self.dev.stats().get("model_loaded", 1)
        except errors.TinyhostError:
            return False

    def recover(self):
        try:
            self.dev.close()
        except Exception:                     # the old connection is gone anyway
            pass
        self.dev, self.model_info = self._connect()

    def memory(self, model_bytes):
        info = self.board_info() if callable(self.board_info) else self.board_info
        if info is None:
            info = self.dev.info()
        stats = {}
        try:
            stats = self.dev.stats() or {}
        except errors.TinyhostError as e:
            log.info("stats not available: %s", e)
        # what the firmware sends: weights in RAM with the model (LOAD, the engine's Model.stats()), the heap
        # in STATS (free now, and the most in use seen after a collection), its total in INFO
        return MemoryResult(
            model_bytes=model_bytes, arena_bytes=getattr(self.model_info, "arena_bytes", None),
            weights_ram_bytes=getattr(self.model_info, "weights_ram_bytes", None),
            heap_total_bytes=getattr(info, "heap_total_bytes", None),
            heap_free_bytes=stats.get("heap_free_bytes", getattr(info, "heap_free_bytes", None)),
            heap_peak_bytes=stats.get("heap_peak_bytes"),
            source="tinyfw LOAD/STATS/INFO (engine Model.stats, gc.mem_free, gc.mem_alloc)")

    def close(self):
        self.dev.close()


def _anomaly_reference(raw, data, sample_dtype, tensor):
    """What an autoencoder should reproduce: the float input frames, or the dequantized input bytes."""
    import numpy as np

    if sample_dtype == "float32":
        return np.frombuffer(raw, dtype="<f4").astype(np.float64)
    return metrics.dequantize(data, tensor.dtype, tensor.scale, tensor.zero_point)


# --- performance -------------------------------------------------------------------------------------------------

def pick_inputs(dataset, count=MLPERF_INPUTS):
    """``count`` different items spread over the data set (MLPerf Tiny asks for 5 different inputs)."""
    items = dataset.items
    if len(items) < count:
        raise errors.UsageError(f"the data set has {len(items)} samples; performance mode needs {count} "
                                "different inputs", hint="use a bigger test set, or leave out --dataset")
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def synthetic_inputs(nbytes, count=MLPERF_INPUTS, seed=0, dtype="int8"):
    """``count`` different pseudo-random inputs (used without --dataset; labelled as such in the result): random
    bytes, or for a float32 input standard-normal float32 values (random bytes would be NaNs and infinities)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return [rng.standard_normal(nbytes // 4).astype("<f4").tobytes() for _ in range(count)]
    return [rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes() for _ in range(count)]


def run_performance(target, inputs, window_s=MLPERF_WINDOW_S, min_inferences=MLPERF_MIN_INFERENCES, warmups=1,
                    listener=None, latency_source="each inference of the windows, device clock"):
    """MLPerf Tiny performance mode: per input, ``warmups`` then one window of >= ``window_s`` and
    >= ``min_inferences`` inferences; score = median throughput over the windows."""
    listener = listener or Listener()
    if window_s <= 0 or min_inferences < 1:
        raise errors.UsageError("the window must be longer than 0 s with at least 1 inference",
                                hint="pass --window-s 10 (the MLPerf Tiny rule) or another positive value")
    windows, all_times = [], []
    for index, data in enumerate(inputs):
        listener.message(f"input {index + 1}/{len(inputs)}: {warmups} warm-up, then >= {window_s:g} s "
                         f"and >= {min_inferences} inferences")
        n, elapsed_us, times = target.window(
            data, warmups, min_inferences, int(window_s * 1e6),
            on_timing=lambda seq, us, index=index: listener.timing(index, seq, us))
        window = Window(input_index=index, warmups=warmups, inferences=n, elapsed_us=int(elapsed_us),
                        inferences_per_s=metrics.window_throughput(n, elapsed_us), times_us=list(times))
        windows.append(window)
        all_times.extend(times)
        listener.window(window)
    score = metrics.throughput_score([(w.inferences, w.elapsed_us) for w in windows])
    latency = metrics.latency_stats(all_times).__dict__ if all_times else None
    return PerformanceResult(
        window_s=window_s, min_inferences=min_inferences, windows=windows,
        median_inferences_per_s=score.median_inferences_per_s, median_latency_us=score.median_latency_us,
        min_inferences_per_s=score.min_inferences_per_s, max_inferences_per_s=score.max_inferences_per_s,
        spread_pct=score.spread_pct, latency=latency, latency_source=latency_source if all_times else "")


# --- accuracy ----------------------------------------------------------------------------------------------------

RECOVERABLE = (errors.TransportError, errors.ProtocolError, errors.DeviceError)


def run_accuracy(target, dataset, journal, listener=None, max_recoveries=3):
    """One inference per item over the whole set, each recorded in ``journal`` before the next starts.

    Items already in the journal (an earlier, interrupted run) are not run again. When the board stops answering
    or resets, ``target.recover()`` reconnects and the item is retried; after ``max_recoveries`` in a row, or when
    recovery fails, :class:`BenchInterrupted` says how to resume.
    """
    listener = listener or Listener()
    total = len(dataset.items)
    resumed = len([i for i in journal.done if i < total])
    if resumed:
        listener.message(f"resuming: {resumed} of {total} samples are in the journal {journal.path}")
    anomaly = dataset.benchmark == "ad01"
    started = time.monotonic()
    resets = sum(1 for e in journal.events if e.get("event") == "reset")
    for item in dataset.items:
        if item.index in journal.done:
            continue
        raw = dataset.read(item)
        failures = 0
        while True:
            try:
                outcome = target.infer_item(raw, dataset.sample_dtype)
                break
            except errors.TinyhostError as e:
                if not isinstance(e, RECOVERABLE) and not target.model_lost():
                    raise
                failures += 1
                resets += 1
                journal.event("reset", item=item.index, error=str(e))
                if failures > max_recoveries:
                    raise BenchInterrupted(
                        f"sample {item.index} ({item.file}) failed {failures} times in a row: {e.message}",
                        hint=f"{len(journal.done)} of {total} samples are safe in {journal.path}; check the "
                             "board, then run the same command with --resume") from None
                listener.message(f"the board stopped answering at sample {item.index} ({e.message}); "
                                 "reconnecting and reloading the model")
                try:
                    target.recover()
                except errors.TinyhostError as again:
                    raise BenchInterrupted(
                        f"the board did not come back after sample {item.index}: {again.message}",
                        hint=f"{len(journal.done)} of {total} samples are safe in {journal.path}; reconnect or "
                             "reset the board, then run the same command with --resume") from None
        record = {"file": item.file, "w": item.window, "label": item.label, "pred": outcome.predicted,
                  "score": outcome.score, "t": outcome.time_us, "n": outcome.input_bytes}
        if outcome.output:
            record["out"] = [round(v, 6) for v in outcome.output]
        journal.record(item.index, **record)
        sample = _sample_from_record(journal.done[item.index])
        listener.sample(sample, len(journal.done), total, _running(journal.done, anomaly))
    journal.finish()
    result = summarize_accuracy(dataset, journal.done, resets=resets, resumed=resumed)
    result.wall_s = time.monotonic() - started
    return result


def _sample_from_record(rec):
    return SampleResult(index=rec["i"], file=rec["file"], window=rec["w"], label=rec["label"],
                        predicted=rec["pred"], score=rec["score"], time_us=rec["t"], output=rec.get("out", []))


def _running(done, anomaly):
    if anomaly:
        labels = [1 if r["label"] else 0 for r in done.values()]
        if 0 < sum(labels) < len(labels):
            return {"metric": "auc", "value": metrics.roc_auc([r["score"] for r in done.values()], labels)}
        return {"metric": "auc", "value": None}
    hits = sum(1 for r in done.values() if r["pred"] == r["label"])
    return {"metric": "top1", "value": hits / len(done)}


def summarize_accuracy(dataset, done, resets=0, resumed=0):
    """AccuracyResult from journal records (index -> record) covering every item of ``dataset``."""
    missing = [it.index for it in dataset.items if it.index not in done]
    if missing:
        raise BenchInterrupted(f"{len(missing)} samples have no result (first: {missing[0]})",
                               hint="run the same command with --resume to finish them")
    records = [done[it.index] for it in dataset.items]
    samples = [_sample_from_record(r) for r in records]
    bench = dataset.benchmark
    result = AccuracyResult(
        benchmark=bench, n_items=len(records), n_files=len(dataset.files) or len(records), metric="top1",
        value=0.0, class_names=list(dataset.class_names), samples=samples, board_resets=resets,
        resumed_items=resumed, device_time_s=sum(r["t"] for r in records) / 1e6,
        input_bytes=sum(r.get("n", 0) for r in records))
    if bench == "ad01":
        per_file = {}
        for r in records:
            per_file.setdefault(r["file"], (r["label"], []))[1].append(r["score"])
        file_scores = [{"file": f, "label": lab, "score": sum(s) / len(s)} for f, (lab, s) in per_file.items()]
        labels = [1 if fs["label"] else 0 for fs in file_scores]
        result.file_scores = file_scores
        result.metric = "auc"
        result.auc = metrics.roc_auc([fs["score"] for fs in file_scores], labels)
        result.value = result.auc
    else:
        n_classes = max(dataset.n_classes, max(len(r.get("out", [])) for r in records))
        labels = [r["label"] for r in records]
        preds = [r["pred"] for r in records]
        outputs = [r.get("out") for r in records]
        result.value = sum(1 for y, p in zip(labels, preds) if y == p) / len(records)
        result.top_k = {"1": result.value}
        if all(outputs) and n_classes > 5:
            result.top_k["5"] = metrics.top_k_accuracy(outputs, labels, 5)
        matrix = metrics.confusion_matrix(labels, preds, n_classes)
        result.confusion = matrix
        names = list(dataset.class_names) + [str(i) for i in range(len(dataset.class_names), n_classes)]
        result.class_names = names
        result.per_class = [{"index": c.index, "name": names[c.index], "support": c.support,
                             "precision": c.precision, "recall": c.recall} for c in metrics.per_class_stats(matrix)]
    target = metrics.meets_target(bench, result.value)
    if target:
        _, result.target, result.meets_target = target
    return result
