"""perceiver-lit: Perceiver and Perceiver IO on PyTorch Lightning."""

__version__ = "0.1.0"
