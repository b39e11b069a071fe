"""Callbacks: checkpoints, preemption, throughput/MFU, NaN guard, summary lines, input-keep schedules, W&B
dashboards, corrupt-data reports."""

from perceiver_lit.callbacks.attention_maps import AttentionMaps
from perceiver_lit.callbacks.checkpoint import Checkpoint
from perceiver_lit.callbacks.corrupt_samples import LogCorruptSamples
from perceiver_lit.callbacks.eval_failure import EvalFailureCheckpoint
from perceiver_lit.callbacks.grad_norm import GradNorm
from perceiver_lit.callbacks.input_keep import InputKeepSchedule, UnmaskedTuning
from perceiver_lit.callbacks.nan_guard import NanGuard, NonFiniteLossError
from perceiver_lit.callbacks.preemption import PreemptionCheckpoint
from perceiver_lit.callbacks.summary import Summary
from perceiver_lit.callbacks.tables import PerClassTable, RunConfig
from perceiver_lit.callbacks.throughput import Throughput

__all__ = [
    "AttentionMaps",
    "Checkpoint",
    "EvalFailureCheckpoint",
    "GradNorm",
    "InputKeepSchedule",
    "LogCorruptSamples",
    "NanGuard",
    "NonFiniteLossError",
    "PerClassTable",
    "PreemptionCheckpoint",
    "RunConfig",
    "Summary",
    "Throughput",
    "UnmaskedTuning",
]
