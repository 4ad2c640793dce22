"""Offload mode: boards hand inference to ``tinyhost serve`` over TCP or a host-relayed serial link.

wire (frame codec, no I/O) -> auth (keys, HMAC) -> server / client / relay (I/O) -> metrics (bench numbers).
The device side is ``device/tinyfw/offload/``; docs/offload.md describes the protocol and the modes.
"""
