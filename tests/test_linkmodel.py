"""The link model: transfer times by hand for each link, and a virtual board's offload pass in board time."""

import pytest

from tinyhost import boards, linkmodel
from tinyhost.boardtime import BoardTime
from tinyhost.offload.metrics import OffloadRecord


def test_transfer_times_by_hand():
    # UART 8N1 at 115200 baud: 92160 bit/s of data; 5660 B = 45280 bits -> 491,319.4 us, rounded up
    assert linkmodel.transfer_us(linkmodel.uart(115200), 5660) == 491320
    # Wi-Fi: 4 segments of <= 1460 B, (5660 + 4 x 40) x 8 = 46560 bits at 20 Mbit/s = 2328 us, + 1000 us latency
    assert linkmodel.transfer_us(linkmodel.LINKS["wifi"], 5660) == 3328
    # BLE: 3 packets of <= 244 B, (490 + 3 x 21) x 8 = 4424 bits at 1 Mbit/s, + 3 x 380 us + 7500 us
    assert linkmodel.transfer_us(linkmodel.LINKS["ble"], 490) == 13064
    assert linkmodel.transfer_us(linkmodel.LINKS["ble"], 0) == 0


def test_losses_cost_retransmissions_and_more_bytes_never_less_time():
    lossy = linkmodel.Link("lossy", 1_000_000, 100, 0, 0, 10, 500_000, "test")    # half the packets lost
    assert linkmodel.transfer_us(lossy, 100) == 2 * 10 + 2 * 800                    # two transmissions
    for link in (*linkmodel.LINKS.values(), linkmodel.uart(9600)):
        times = [linkmodel.transfer_us(link, n) for n in range(0, 3000, 37)]
        assert times == sorted(times)


def test_transport_picks_the_link():
    esp32, nano = boards.load("esp32"), boards.load("nano33ble")
    assert linkmodel.for_transport("tcp", esp32).name == "wifi"
    assert linkmodel.for_transport("tcp", nano).name == "ble"
    assert linkmodel.for_transport("serial", nano) == linkmodel.uart(nano.baud)


def test_offload_pass_in_board_time_by_hand():
    esp32 = boards.load("esp32")        # 160 MHz, copy 16 cycles a byte; 165 / 792 / 330 mW active / TX / RX
    local = BoardTime("bt-1", "esp32", 160, "viper", "ram", 1000.0, 1_000_000, 0)
    records = [OffloadRecord(source="model", offloaded=True, request_bytes=500, reply_bytes=40,
                             server_queue_us=100, server_compute_us=2000),
               OffloadRecord(source="local", local_us=3),
               OffloadRecord(source="local", fallback=True, request_bytes=500, local_us=3)]
    bt = linkmodel.offload_board_time(records, local, linkmodel.LINKS["wifi"], esp32)
    # offloaded: 540 B x 16 cycles / 160 MHz = 54 us; send 1000 + 216; server 2100; receive 1000 + 32
    # local: 1000; fallback: send 1216 + local 1000
    assert bt.stages_mean_us == pytest.approx({"local": 2000 / 3, "serialise_parse": 54 / 3, "send": 2432 / 3,
                                               "server": 2100 / 3, "receive": 1032 / 3})
    assert bt.mean_us == pytest.approx(7618 / 3)
    # CPU 2054 us at 165 mW, TX 2432 us at 792 mW, RX 3132 us at 330 mW
    assert bt.energy_uj == pytest.approx((165 * 2054 + 792 * 2432 + 330 * 3132) / 1000 / 3)
    assert (bt.board_time_model, bt.link_model, bt.link) == ("bt-1", "lk-1", "wifi")
    uart = linkmodel.offload_board_time(records[:1], local, linkmodel.uart(115200), esp32)
    assert uart.energy_uj == pytest.approx(165 * (54 + 43403 + 2100 + 3473) / 1000)   # no radio: the CPU waits
