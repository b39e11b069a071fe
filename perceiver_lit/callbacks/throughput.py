"""Training throughput (samples/s) and model FLOP utilisation (MFU).

MFU = achieved FLOP/s / peak FLOP/s, with achieved = 3 x forward FLOPs (forward + backward) x samples/s and the
forward FLOPs from the model's analytic `flops_per_sample()`. The peak: on CUDA, Lightning's table of devices
(`get_available_flops`, per precision); on CPU, `peak_flops` if given, else measured once with a matmul.
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch


def measure_matmul_flops(n: int = 512, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of an n x n matmul on this CPU: a practical peak for CPU MFU (the spec sheet is rarely known)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def _precision_dtype(trainer: pl.Trainer) -> torch.dtype:
    precision = str(trainer.precision)
    if "bf16" in precision:
        return torch.bfloat16
    if "16" in precision:
        return torch.float16
    if "64" in precision:
        return torch.float64
    return torch.float32


class Throughput(pl.Callback):
    """Logs `perf/samples_per_sec` (all devices), `perf/samples_per_sec_per_device` and, where the net states
    `flops_per_sample()`, `perf/mfu`, averaged over windows of `window` steps (the first window is skipped: it
    holds compilation and loader start-up).

    Args:
        window: steps per measurement.
        peak_flops: peak FLOP/s of one device; None: Lightning's table on CUDA, a measured matmul on CPU.
    """

    def __init__(self, window: int = 20, peak_flops: float | None = None) -> None:
        self.window, self.peak_flops = max(1, window), peak_flops
        self._t0: float | None = None
        self._samples = 0
        self._steps = 0
        self._flops_per_sample: float | None = None
        self.last: dict[str, float] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = getattr(pl_module, "net", pl_module)
        fn = getattr(net, "flops_per_sample", None) or getattr(
            getattr(net, "_orig_mod", None), "flops_per_sample", None
        )
        self._flops_per_sample = float(fn()) if callable(fn) else None
        if self.peak_flops is None and self._flops_per_sample is not None:
            device = pl_module.device
            if device.type == "cuda":
                from lightning.fabric.utilities.throughput import get_available_flops

                self.peak_flops = get_available_flops(device, _precision_dtype(trainer))
            elif device.type == "cpu":
                self.peak_flops = measure_matmul_flops()
        self._t0, self._samples, self._steps = None, 0, 0

    def _clock(self, device: torch.device) -> float:
        """A timestamp after the device has finished its queued work. Called only at window edges: a sync on
        every step would stall the GPU's queue (the host could no longer run ahead of the device)."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self._t0 is None:  # the clock starts after the first step (warm-up, loader start)
            self._t0, self._samples, self._steps = self._clock(pl_module.device), 0, 0
            return
        target = batch.get("target") if isinstance(batch, dict) else None
        self._samples += len(target) if target is not None else 1
        self._steps += 1
        if self._steps < self.window:
            return
        now = self._clock(pl_module.device)  # ends this window and starts the next
        per_device = self._samples / (now - self._t0)
        metrics = {
            "perf/samples_per_sec_per_device": per_device,
            "perf/samples_per_sec": per_device * trainer.world_size,
        }
        if self._flops_per_sample and self.peak_flops:
            metrics["perf/mfu"] = 3 * self._flops_per_sample * per_device / self.peak_flops
        self.last = metrics
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self._t0, self._samples, self._steps = now, 0, 0
