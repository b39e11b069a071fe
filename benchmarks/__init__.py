"""perceiver-lit benchmark suite: `python -m benchmarks.run [--quick]`; see benchmarks/README.md."""
