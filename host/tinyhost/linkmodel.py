"""Links in board time: how long an offload request and its reply take to cross Wi-Fi, BLE or a UART relay.

A virtual board's offload runs over the host's loopback, so its measured send and receive times say nothing about
the radio a board would use. ``transfer_us(link, nbytes)`` is the deterministic time of ``nbytes`` over a link
profile (packets of ``payload_bytes`` with ``overhead_bytes`` each at ``rate_bps``, a gap per packet, a one-way
latency, losses as expected retransmissions), in integer microseconds. :func:`offload_board_time` turns a pass's
records into board time with it: the board's compute from the board-time model, the link from this module, the
server's queue and compute as measured (the server is real). Every figure carries :data:`LINK_MODEL`.
"""

from dataclasses import asdict, dataclass

LINK_MODEL = "lk-1"


@dataclass(frozen=True)
class Link:
    name: str
    rate_bps: int               # the medium's bit rate as the packets see it
    payload_bytes: int          # application bytes per packet; 0: a byte stream (UART)
    overhead_bytes: int         # header and trailer bytes per packet
    latency_us: int             # one way, before the first packet
    per_packet_us: int          # gap, acknowledgement or turnaround per packet
    loss_ppm: int               # packets lost per million (each costs one more transmission, in expectation)
    source: str


def uart(baud):
    """The serial relay of a board without Wi-Fi (tinyhost.offload.relay): 8N1 at ``baud``, 10 bits a byte; the
    offload frame's own header is already in the request's bytes."""
    return Link("uart", baud * 8 // 10, 0, 0, 0, 0, 0,
                f"UART 8N1 at {baud} baud: 10 line bits per byte (the board profile's baud rate); the relay on the "
                "host adds no framing")


LINKS = {
    "wifi": Link(
        "wifi", 20_000_000, 1460, 40, 1000, 0, 0,
        "assumption: an ESP32 in a quiet 802.11n HT20 LAN, TCP: 1460-byte segments (MSS of a 1500-byte MTU) with "
        "40 bytes of TCP/IP headers at about 20 Mbit/s of goodput, 1 ms one way; one public figure: ESP32-S3, a "
        "5.66 kB activation over UDP in 3.2 ms (Jenhani et al., arXiv 2507.16594), the model gives 3.33 ms"),
    "ble": Link(
        "ble", 1_000_000, 244, 21, 7500, 380, 0,
        "Bluetooth Core Specification 5.x, LE 1M PHY: 1 Mbit/s; 251-byte link-layer payloads with Data Length "
        "Extension (244 B of ATT notification data, 21 B of preamble, access address, headers, MIC-less CRC), "
        "two inter-frame spaces of 150 us and an empty acknowledgement (80 us) per packet, one connection "
        "interval (7.5 ms, the minimum) before the first; assumption: every packet in one connection event"),
}


def transfer_us(link, nbytes):
    """Microseconds for ``nbytes`` of application data over ``link`` (0 bytes: 0 us). Integer arithmetic."""
    if nbytes <= 0:
        return 0
    if link.payload_bytes <= 0:                 # a byte stream (UART): no packets
        return -(-nbytes * 8 * 1_000_000 // link.rate_bps)
    packets = -(-nbytes // link.payload_bytes)
    sent = -(-packets * 1_000_000 // (1_000_000 - link.loss_ppm))    # with expected retransmissions
    bits = (nbytes + packets * link.overhead_bytes) * 8 * sent // packets
    return link.latency_us + sent * link.per_packet_us + -(-bits * 1_000_000 // link.rate_bps)


def for_transport(transport, profile):
    """The link a board's offload uses: ``serial`` -> its UART relay at the profile's baud; ``tcp`` -> Wi-Fi when
    the board has it, else BLE (a board whose only radio is BLE reaches a gateway over it)."""
    if transport != "tcp":
        return uart(profile.baud)
    return LINKS["wifi"] if "wifi" in profile.radios else LINKS["ble"]


@dataclass
class OffloadBoardTime:
    """A pass of ``bench --offload`` on a virtual board, in board time (estimates, except the server's time)."""
    board_time_model: str
    link_model: str
    link: str
    requests: int
    mean_us: float                  # per inference, all stages
    stages_mean_us: dict            # local, serialise_parse, send, server (measured), receive
    energy_uj: float                # per inference: active current for compute, radio TX/RX while on the link
    link_source: str
    note: str

    def to_dict(self):
        return asdict(self)


def offload_board_time(records, local_time, link, profile, head_time=None):
    """Board time of a pass: ``records`` (tinyhost.offload.metrics.OffloadRecord), ``local_time`` (the
    BoardTime of one local inference), ``link`` (a :class:`Link`), ``profile`` (the board's). Serialising and
    parsing count as copying their bytes (``copy_byte_cycles``); a fallback pays its request's send and then
    the local inference. ``head_time``: a split pass's BoardTime of the head, what an offloaded record ran on
    the board (its fallbacks ran head and tail: the whole model)."""
    if not records:
        raise ValueError("no records")
    clock = profile.board_time_clock_mhz
    copy_centi = profile.board_time["copy_byte_cycles"].centicycles
    radio = link.name != "uart"
    totals = {"local": 0, "serialise_parse": 0, "send": 0, "server": 0, "receive": 0}
    cpu_us = tx_us = rx_us = 0
    for r in records:
        stage = dict.fromkeys(totals, 0)
        if r.offloaded:
            stage["serialise_parse"] = ((r.request_bytes + r.reply_bytes) * copy_centi * 10 // clock + 500) // 1000
            stage["send"] = transfer_us(link, r.request_bytes)
            stage["server"] = r.server_queue_us + r.server_compute_us
            stage["receive"] = transfer_us(link, r.reply_bytes)
        else:
            if r.fallback:
                stage["send"] = transfer_us(link, r.request_bytes)
            stage["local"] = local_time.total_ns // 1000
        if r.offloaded and r.local_us:      # auto mode: ran locally first, then asked the server; split: the head
            stage["local"] = (head_time or local_time).total_ns // 1000
        for k, v in stage.items():
            totals[k] += v
        cpu_us += stage["local"] + stage["serialise_parse"]
        if radio:
            tx_us += stage["send"]
            rx_us += stage["server"] + stage["receive"]
        else:
            cpu_us += stage["send"] + stage["server"] + stage["receive"]
    n = len(records)
    energy = (profile.power_mw("active") * cpu_us + profile.power_mw("radio_tx") * tx_us
              + profile.power_mw("radio_rx") * rx_us) / 1000 / n
    return OffloadBoardTime(
        local_time.model, LINK_MODEL, link.name, n, sum(totals.values()) / n, {k: v / n for k, v in totals.items()},
        energy, link.source,
        "estimate: the board's compute from the board-time model, the link from the link model; the server's "
        "queue and compute times are measured (it is a real server)"
        + ("; radio TX while sending, RX while waiting for and receiving the reply" if radio
           else "; UART relay: no radio, the CPU is active while waiting"))
