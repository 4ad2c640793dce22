"""Offload metrics for `tinyhost bench --offload`: breakdown, agreement, energy with radio time."""

import pytest

from tinyhost import boards
from tinyhost.offload import metrics
from tinyhost.offload.board import parse_run_output


def _remote(total, compute, wait, **kw):
    base = dict(source="model", offloaded=True, serialise_us=10, send_us=20, wait_us=wait, receive_us=5,
                parse_us=7, server_queue_us=30, server_compute_us=compute, total_us=total, request_bytes=570,
                reply_bytes=90)
    base.update(kw)
    return base


def test_breakdown_splits_network_from_server_time():
    records = [_remote(1000 + 10 * i, 600, 900 + 10 * i) for i in range(11)]
    s = metrics.summarise(records)
    assert s.requests == 11 and s.offloaded == 11 and s.fallbacks == 0
    assert s.latency["network"].p50_us == 900 + 50 - 30 - 600
    assert s.latency["overhead"].p50_us == 1050 - 600
    assert s.latency["server_compute"].p99_us == 600
    assert "local" not in s.latency


def test_fallbacks_retries_and_errors_are_counted():
    records = [_remote(1000, 600, 900),
               dict(source="local", fallback=True, error=-1, retries=0, local_us=400, total_us=300_400),
               dict(source="local", fallback=True, error=-2, retries=1, local_us=400, total_us=900)]
    s = metrics.summarise(records)
    assert (s.offloaded, s.fallbacks, s.retries) == (1, 2, 1)
    assert s.errors == {-1: 1, -2: 1} and s.sources == {"model": 1, "local": 2}
    assert s.latency["local"].count == 2


def test_agreement_top1_top3_and_confidence_difference():
    q = lambda probs: bytes((round(p * 256) - 128) & 0xFF for p in probs)          # int8, scale 1/256, zp -128
    ours = [q([0.7, 0.2, 0.1, 0.0]), q([0.1, 0.5, 0.4, 0.0]), q([0.0, 0.1, 0.2, 0.7])]
    refs = [q([0.6, 0.3, 0.1, 0.0]), q([0.1, 0.3, 0.6, 0.0]), q([0.5, 0.3, 0.2, 0.0])]
    a = metrics.agreement(ours, refs, "int8", 1 / 256, -128)
    assert a.count == 3 and a.top1 == pytest.approx(1 / 3)
    assert a.top3 == pytest.approx(2 / 3)        # class 3 is not in the third reference's top 3
    expected = (abs(0.7 - 0.6) + abs(0.5 - 0.6) + abs(0.7 - 0.5)) / 3
    assert a.mean_abs_confidence_diff == pytest.approx(expected, abs=2 / 256)
    with pytest.raises(ValueError):
        metrics.agreement(ours, refs[:2])


def test_energy_counts_radio_time_over_wifi_and_none_over_serial():
    esp32 = boards.load("esp32")
    r = metrics.OffloadRecord(offloaded=True, serialise_us=100, send_us=50, wait_us=2000, receive_us=100,
                              parse_us=100, total_us=2400, request_bytes=500)
    e = metrics.energy_estimate(esp32, [r], transport="tcp", link_rate_bps=1_000_000)
    airtime_us = 500 * 8                                              # 4 ms at 1 Mbit/s > measured 50 us
    assert e.radio_tx_uj == pytest.approx(240.0 * 3.3 * airtime_us / 1000)
    assert e.radio_rx_uj == pytest.approx(100.0 * 3.3 * 2100 / 1000)
    assert e.cpu_uj == pytest.approx(50.0 * 3.3 * 200 / 1000)
    assert e.uj_per_inference == pytest.approx(e.cpu_uj + e.radio_tx_uj + e.radio_rx_uj)
    serial = metrics.energy_estimate(boards.load("nano33ble"), [r], transport="serial")
    assert serial.radio_tx_uj == serial.radio_rx_uj == 0
    assert serial.cpu_uj == pytest.approx(3.3 * 3.0 * (200 + 4000 + 2100) / 1000)


def test_correct_per_second():
    assert metrics.correct_per_second([1, 2, 3, 4], [1, 2, 0, 4], 2.0) == 1.5


def test_board_run_output_is_parsed():
    text = ('OFF 0a0b {"source": "model", "offloaded": true, "total_us": 5}\n'
            'some other line\nOFFEND 1234 {"offloaded": 1, "fallbacks": 0}\n')
    run = parse_run_output(text)
    assert run.outputs == [b"\x0a\x0b"] and run.records[0]["total_us"] == 5
    assert run.counters == {"offloaded": 1, "fallbacks": 0} and run.wall_s == 1.234
