"""tinyhost: MicroPython firmware and host tool for machine learning on microcontrollers."""

__version__ = "0.1.0"
