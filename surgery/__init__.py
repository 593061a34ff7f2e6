"""surgery: model surgery and FLOP/latency analysis for PyTorch CNNs."""

__version__ = "0.1.0"
