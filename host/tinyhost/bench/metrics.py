"""Pure metrics for ``tinyhost bench``: no I/O, plain lists in, numbers and small dataclasses out.

Performance follows the MLPerf Tiny rules (score = median throughput over the windows, reported with its latency);
accuracy covers top-1/top-k, per-class precision and recall, the confusion matrix and, for anomaly detection, the
area under the ROC curve. Quality targets are those of the MLPerf Tiny closed division.
"""

import math
from dataclasses import dataclass

# MLPerf Tiny closed-division quality targets (MLPerf Tiny benchmark rules, "Quality target" table; the
# MLPerf Tiny paper, Banbury et al. 2021, Table 1): top-1 accuracy for kws01/vww01/ic01, ROC AUC for ad01.
QUALITY_TARGETS = {
    "kws01": ("top1", 0.90),
    "vww01": ("top1", 0.80),
    "ic01": ("top1", 0.85),
    "ad01": ("auc", 0.85),
}


def percentile(values, pct):
    """The ``pct``-th percentile (0-100) of ``values``, linear interpolation between closest ranks.

    Same definition as numpy's default (``method='linear'``); an empty list is an error.
    """
    if not values:
        raise ValueError("percentile of an empty list")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values):
    return percentile(values, 50)


@dataclass(frozen=True)
class LatencyStats:
    count: int
    mean_us: float
    min_us: float
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float


def latency_stats(times_us):
    """Distribution of single-inference latencies (device clock, microseconds)."""
    if not times_us:
        raise ValueError("no inference times to summarise")
    return LatencyStats(
        count=len(times_us), mean_us=sum(times_us) / len(times_us), min_us=float(min(times_us)),
        p50_us=percentile(times_us, 50), p90_us=percentile(times_us, 90), p99_us=percentile(times_us, 99),
        max_us=float(max(times_us)))


def window_throughput(inferences, elapsed_us):
    """Inferences per second of one timed window."""
    if elapsed_us <= 0:
        raise ValueError(f"a window must last longer than 0 us, got {elapsed_us}")
    return inferences * 1e6 / elapsed_us


@dataclass(frozen=True)
class ThroughputScore:
    median_inferences_per_s: float
    median_latency_us: float          # the latency that goes with the median throughput (1/throughput)
    min_inferences_per_s: float
    max_inferences_per_s: float
    spread_pct: float                 # (max - min) / median * 100: how much the windows disagree


def throughput_score(windows):
    """MLPerf Tiny performance score from windows given as ``(inferences, elapsed_us)`` pairs."""
    if not windows:
        raise ValueError("no windows to score")
    rates = [window_throughput(n, us) for n, us in windows]
    mid = median(rates)
    return ThroughputScore(
        median_inferences_per_s=mid, median_latency_us=1e6 / mid, min_inferences_per_s=min(rates),
        max_inferences_per_s=max(rates), spread_pct=(max(rates) - min(rates)) / mid * 100.0)


def argmax(scores):
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best


def top_k(scores, k):
    """Indices of the ``k`` highest scores, highest first; ties keep the lower index first."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def top_k_accuracy(score_rows, labels, k=1):
    """Fraction of rows whose true label is among the ``k`` highest scores."""
    if len(score_rows) != len(labels):
        raise ValueError(f"{len(score_rows)} score rows but {len(labels)} labels")
    if not labels:
        raise ValueError("no samples")
    hits = sum(1 for scores, label in zip(score_rows, labels) if label in top_k(scores, k))
    return hits / len(labels)


def confusion_matrix(labels, predictions, n_classes):
    """``matrix[true][predicted]`` counts."""
    matrix = [[0] * n_classes for _ in range(n_classes)]
    for true, pred in zip(labels, predictions):
        if not (0 <= true < n_classes and 0 <= pred < n_classes):
            raise ValueError(f"class index out of range 0..{n_classes - 1}: true {true}, predicted {pred}")
        matrix[true][pred] += 1
    return matrix


@dataclass(frozen=True)
class ClassStats:
    index: int
    support: int          # samples whose true class is this one
    precision: float      # nan when the class was never predicted
    recall: float         # nan when the class has no samples


def per_class_stats(matrix):
    stats = []
    n = len(matrix)
    for c in range(n):
        true_pos = matrix[c][c]
        predicted = sum(matrix[r][c] for r in range(n))
        support = sum(matrix[c])
        stats.append(ClassStats(
            index=c, support=support,
            precision=true_pos / predicted if predicted else float("nan"),
            recall=true_pos / support if support else float("nan")))
    return stats


def roc_auc(scores, labels):
    """Area under the ROC curve: probability that a random positive (label 1) scores above a random negative.

    Exact (Mann-Whitney U with ties counted as one half), no threshold grid. Needs both classes present.
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    positives = sum(1 for y in labels if y)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("ROC AUC needs at least one normal (0) and one anomalous (1) sample")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum_pos = 0.0
    i = 0
    while i < len(order):          # average ranks over ties
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg_rank = (i + j) / 2.0 + 1.0
        for t in range(i, j + 1):
            if labels[order[t]]:
                rank_sum_pos += avg_rank
        i = j + 1
    u = rank_sum_pos - positives * (positives + 1) / 2.0
    return u / (positives * negatives)


def meets_target(benchmark, value):
    """``(metric, target, met)`` for an MLPerf Tiny benchmark id, or None when it has no target."""
    if benchmark not in QUALITY_TARGETS:
        return None
    metric, target = QUALITY_TARGETS[benchmark]
    return metric, target, value >= target


def dequantize(raw, dtype, scale, zero_point):
    """Real values of a quantized tensor's bytes (int8/uint8/int16/int32/float32, little-endian)."""
    import numpy as np

    arr = np.frombuffer(bytes(raw), dtype=np.dtype(dtype).newbyteorder("<"))
    if dtype == "float32":
        return arr.astype(np.float64)
    return (arr.astype(np.float64) - zero_point) * scale
