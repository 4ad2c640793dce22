"""Numbers for ``tinyhost bench --offload``: pure functions over per-request records, no I/O.

A record is what the board's ``Predictor.predict`` reports (``Info.as_dict()`` in device/tinyfw/offload/__init__.py), plus
the request and reply sizes when known. ``summarise`` gives the latency breakdown (serialise, send, network, server
queue, server compute, receive, parse, total, overhead = total - server compute) with p50/p90/p99, fallbacks and
retries, and an energy estimate that counts radio time; ``agreement`` compares outputs with a reference model's.
"""

from dataclasses import dataclass, field

from ..bench.metrics import LatencyStats, latency_stats

STAGES = ("serialise", "send", "network", "server_queue", "server_compute", "receive", "parse", "local", "total",
          "overhead")


@dataclass(frozen=True)
class OffloadRecord:
    source: str = "local"          # local | model | reference
    offloaded: bool = False
    fallback: bool = False
    error: int = 0
    retries: int = 0
    confidence: float = None
    local_us: int = 0
    serialise_us: int = 0
    send_us: int = 0
    wait_us: int = 0
    receive_us: int = 0
    parse_us: int = 0
    server_queue_us: int = 0
    server_compute_us: int = 0
    total_us: int = 0
    request_bytes: int = 0
    reply_bytes: int = 0

    @classmethod
    def from_info(cls, info, request_bytes=0, reply_bytes=0):
        """From the device's ``Info.as_dict()`` (unknown keys are ignored)."""
        known = {k: info[k] for k in cls.__dataclass_fields__ if k in info}
        if request_bytes:
            known["request_bytes"] = request_bytes
        if reply_bytes:
            known["reply_bytes"] = reply_bytes
        return cls(**known)

    @property
    def network_us(self):
        """Time on the link: waiting for the reply header minus what the server spent."""
        return max(0, self.wait_us - self.server_queue_us - self.server_compute_us)

    @property
    def overhead_us(self):
        return max(0, self.total_us - self.server_compute_us - self.local_us)


@dataclass(frozen=True)
class Agreement:
    count: int
    top1: float                    # fraction with the same top-1 class
    top3: float                    # fraction whose top-1 is among the reference's top-3
    mean_abs_confidence_diff: float


@dataclass(frozen=True)
class EnergyEstimate:
    uj_per_inference: float
    cpu_uj: float
    radio_tx_uj: float
    radio_rx_uj: float
    inputs: dict
    note: str


@dataclass(frozen=True)
class OffloadSummary:
    requests: int
    offloaded: int
    fallbacks: int
    retries: int
    errors: dict                   # error code -> count
    latency: dict                  # stage -> LatencyStats (offloaded requests only for the remote stages)
    energy: EnergyEstimate = None
    agreement: Agreement = None
    sources: dict = field(default_factory=dict)


def _dequantise(output, dtype, scale, zero_point):
    import numpy as np
    np_dtype = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32,
                "float32": np.float32}[dtype]
    x = np.frombuffer(bytes(output), dtype=np_dtype).astype(np.float64)
    return x if dtype == "float32" or not scale else (x - zero_point) * scale


def agreement(outputs, reference_outputs, dtype="int8", scale=1.0, zero_point=0, reference_quant=None):
    """Agreement of ``outputs`` (raw output tensors, bytes) with ``reference_outputs``.

    Quantisation parameters turn bytes into real values; ``reference_quant`` = (dtype, scale, zero point) when the
    reference outputs are in another layout (a float32 model's). Confidence = the real value of the top-1 class.
    """
    import numpy as np
    if len(outputs) != len(reference_outputs) or not outputs:
        raise ValueError(f"need equally many outputs and reference outputs, got {len(outputs)} and "
                         f"{len(reference_outputs)}")
    rq = reference_quant or (dtype, scale, zero_point)
    top1 = top3 = 0
    diff = 0.0
    for out, ref in zip(outputs, reference_outputs):
        a = _dequantise(out, dtype, scale, zero_point)
        b = _dequantise(ref, *rq)
        if a.shape != b.shape:
            raise ValueError(f"output has {a.size} elements, reference {b.size}")
        ia, ib = int(np.argmax(a)), int(np.argmax(b))
        top1 += ia == ib
        top3 += ia in np.argsort(-b, kind="stable")[:3]
        diff += abs(float(a[ia]) - float(b[ib]))
    n = len(outputs)
    return Agreement(n, top1 / n, top3 / n, diff / n)


def energy_estimate(board, records, transport="tcp", link_rate_bps=1_000_000):
    """Mean µJ per inference on ``board`` (tinyhost.boards.Board) for these records.

    CPU at ``power['active']`` for local inference, serialising and parsing. Over Wi-Fi (``transport='tcp'``) the
    radio transmits for the request's airtime at ``link_rate_bps`` (or the measured send time if longer) at
    ``power['radio_tx']``, and listens at ``power['radio_rx']`` from the end of sending until the reply is in
    (measured wait + receive: on loopback that is mostly the server's time). Over a relayed serial link no radio
    is used: the CPU waits at ``power['active']``.
    """
    if not records:
        raise ValueError("no records")
    p_active = board.power_mw("active")
    p_tx, p_rx = board.power_mw("radio_tx"), board.power_mw("radio_rx")
    use_radio = transport == "tcp"
    cpu = tx = rx = 0.0
    for r in records:
        cpu_us = r.local_us + r.serialise_us + r.parse_us
        if r.offloaded or r.fallback:
            airtime_us = r.request_bytes * 8 * 1e6 / link_rate_bps if r.request_bytes else 0.0
            send_us = max(float(r.send_us), airtime_us)
            listen_us = r.wait_us + r.receive_us
            if use_radio:
                tx += p_tx * send_us / 1000.0
                rx += p_rx * listen_us / 1000.0
            else:
                cpu_us += send_us + listen_us
        cpu += p_active * cpu_us / 1000.0
    n = len(records)
    note = ("estimate from datasheet currents (board profile) and measured stage times, not a measurement; "
            + ("radio TX for the request's airtime at the given link rate, RX while awaiting the reply"
               if use_radio else "serial relay: no radio, the CPU is active while waiting"))
    return EnergyEstimate((cpu + tx + rx) / n, cpu / n, tx / n, rx / n,
                          {"active_mw": p_active, "radio_tx_mw": p_tx, "radio_rx_mw": p_rx,
                           "link_rate_bps": link_rate_bps, "transport": transport, "board": board.name}, note)


def breakdown(records):
    """{stage: LatencyStats}; remote stages over offloaded requests, ``local`` over those that ran locally."""
    remote = [r for r in records if r.offloaded]
    local = [r for r in records if r.local_us]
    series = {
        "serialise": [r.serialise_us for r in remote], "send": [r.send_us for r in remote],
        "network": [r.network_us for r in remote], "server_queue": [r.server_queue_us for r in remote],
        "server_compute": [r.server_compute_us for r in remote], "receive": [r.receive_us for r in remote],
        "parse": [r.parse_us for r in remote], "local": [r.local_us for r in local],
        "total": [r.total_us for r in records], "overhead": [r.overhead_us for r in remote],
    }
    return {stage: latency_stats(values) for stage, values in series.items() if values}


def summarise(records, board=None, transport="tcp", link_rate_bps=1_000_000, errors=None):
    """An OffloadSummary of ``records`` (OffloadRecord or Info dicts). ``errors``: the device's error counters."""
    records = [r if isinstance(r, OffloadRecord) else OffloadRecord.from_info(r) for r in records]
    if not records:
        raise ValueError("no records to summarise")
    if errors is None:
        errors = {}
        for r in records:
            if r.error:
                errors[r.error] = errors.get(r.error, 0) + 1
    sources = {}
    for r in records:
        sources[r.source] = sources.get(r.source, 0) + 1
    return OffloadSummary(
        requests=len(records), offloaded=sum(r.offloaded for r in records),
        fallbacks=sum(r.fallback for r in records), retries=sum(r.retries for r in records), errors=errors,
        latency=breakdown(records),
        energy=energy_estimate(board, records, transport, link_rate_bps) if board is not None else None,
        sources=sources)


def correct_per_second(predictions, labels, wall_s):
    """Correct results / wall time: ``predictions`` and ``labels`` are class indices."""
    if wall_s <= 0:
        raise ValueError("wall time must be positive")
    return sum(int(p == y) for p, y in zip(predictions, labels)) / wall_s


__all__ = ["OffloadRecord", "Agreement", "EnergyEstimate", "OffloadSummary", "LatencyStats", "agreement",
           "energy_estimate", "breakdown", "summarise", "correct_per_second", "STAGES"]
