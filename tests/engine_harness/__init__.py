"""Helpers for the engine tests: models to test, inputs, the MicroPython VM runner."""
