"""Pure metrics of tinyhost bench: percentiles, throughput score, top-k, confusion matrix, ROC AUC, targets."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinyhost.bench import metrics


def test_percentiles_match_numpy_linear_interpolation():
    values = [12, 5, 7, 100, 3, 8, 9, 10, 11, 4]
    for pct in (0, 50, 90, 99, 100):
        assert metrics.percentile(values, pct) == pytest.approx(np.percentile(values, pct))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 10**7), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_property(values, pct):
    assert metrics.percentile(values, pct) == pytest.approx(np.percentile(values, pct))


def test_percentile_rejects_empty_and_out_of_range():
    with pytest.raises(ValueError):
        metrics.percentile([], 50)
    with pytest.raises(ValueError):
        metrics.percentile([1], 101)


def test_latency_stats():
    s = metrics.latency_stats(list(range(1, 101)))
    assert (s.count, s.min_us, s.max_us) == (100, 1, 100)
    assert s.p50_us == pytest.approx(50.5) and s.p90_us == pytest.approx(90.1) and s.p99_us == pytest.approx(99.01)


def test_throughput_score_is_the_median_window_and_its_latency():
    # five windows: 10 inferences in 1, 2, 0.5, 1.25, 4 s -> 10, 5, 20, 8, 2.5 inf/s; median 8
    windows = [(10, 1_000_000), (10, 2_000_000), (10, 500_000), (10, 1_250_000), (10, 4_000_000)]
    score = metrics.throughput_score(windows)
    assert score.median_inferences_per_s == pytest.approx(8.0)
    assert score.median_latency_us == pytest.approx(125_000)
    assert (score.min_inferences_per_s, score.max_inferences_per_s) == (2.5, 20.0)
    assert score.spread_pct == pytest.approx((20 - 2.5) / 8 * 100)


def test_window_must_have_positive_time():
    with pytest.raises(ValueError):
        metrics.window_throughput(10, 0)


def test_top_k_and_accuracy():
    rows = [[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.4, 0.4, 0.2]]
    labels = [1, 1, 0, 1]
    assert metrics.top_k([0.4, 0.4, 0.2], 2) == [0, 1]                 # tie -> lower index first
    assert metrics.top_k_accuracy(rows, labels, 1) == pytest.approx(1 / 4)
    assert metrics.top_k_accuracy(rows, labels, 2) == pytest.approx(3 / 4)
    assert metrics.top_k_accuracy(rows, labels, 3) == 1.0


def test_confusion_matrix_and_per_class_precision_recall():
    labels = [0, 0, 1, 1, 1, 2]
    preds = [0, 1, 1, 1, 0, 1]
    m = metrics.confusion_matrix(labels, preds, 3)
    assert m == [[1, 1, 0], [1, 2, 0], [0, 1, 0]]
    stats = metrics.per_class_stats(m)
    assert stats[0].precision == pytest.approx(1 / 2) and stats[0].recall == pytest.approx(1 / 2)
    assert stats[1].precision == pytest.approx(2 / 4) and stats[1].recall == pytest.approx(2 / 3)
    assert math.isnan(stats[2].precision) and stats[2].recall == 0.0 and stats[2].support == 1


def test_confusion_matrix_rejects_out_of_range():
    with pytest.raises(ValueError):
        metrics.confusion_matrix([3], [0], 3)


def test_roc_auc_exact_values():
    assert metrics.roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert metrics.roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert metrics.roc_auc([0.5, 0.5], [0, 1]) == 0.5                   # a tie counts one half
    # 3 positives x 2 negatives = 6 pairs; positives 0.35 beats 0.1 only, 0.8 and 0.9 beat both -> 5/6
    assert metrics.roc_auc([0.1, 0.4, 0.35, 0.8, 0.9], [0, 0, 1, 1, 1]) == pytest.approx(5 / 6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.booleans()), min_size=2, max_size=40))
def test_roc_auc_equals_pairwise_definition(pairs):
    scores = [s for s, _ in pairs]
    labels = [int(y) for _, y in pairs]
    pos = [s for s, y in pairs if y]
    neg = [s for s, y in pairs if not y]
    if not pos or not neg:
        with pytest.raises(ValueError):
            metrics.roc_auc(scores, labels)
        return
    expected = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert metrics.roc_auc(scores, labels) == pytest.approx(expected)


def test_quality_targets_of_mlperf_tiny():
    assert metrics.meets_target("kws01", 0.905) == ("top1", 0.90, True)
    assert metrics.meets_target("vww01", 0.79) == ("top1", 0.80, False)
    assert metrics.meets_target("ic01", 0.85) == ("top1", 0.85, True)
    assert metrics.meets_target("ad01", 0.84) == ("auc", 0.85, False)
    assert metrics.meets_target("mymodel", 0.5) is None


def test_dequantize():
    raw = np.array([-128, 0, 127], dtype=np.int8).tobytes()
    assert list(metrics.dequantize(raw, "int8", 1 / 256, -128)) == pytest.approx([0.0, 0.5, 255 / 256])
