"""Benchmarks: features (batch / online vs a pandas baseline), retrieval (indexes
vs exact search), export (ONNX Runtime vs torch eager latency). They may use
pandas; nothing imports them but ``recsys.cli``."""
