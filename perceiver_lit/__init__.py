"""perceiver-lit: Perceiver and Perceiver IO on PyTorch Lightning."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from perceiver_lit import load` without importing torch and Lightning at package import
    if name == "load":
        from perceiver_lit.inference import load

        return load
    raise AttributeError(f"module 'perceiver_lit' has no attribute {name!r}")
