"""Tasks: LightningModules that wrap any model with a loss, metrics, optimizer and schedule."""

from perceiver_lit.tasks.autoencoding import MultimodalAutoencoding
from perceiver_lit.tasks.base import Task
from perceiver_lit.tasks.classification import Classification
from perceiver_lit.tasks.flow import OpticalFlow
from perceiver_lit.tasks.mlm import MaskedByteModelling, mask_tokens
from perceiver_lit.tasks.multilabel import MultilabelClassification
from perceiver_lit.tasks.optim import Lamb, LRSchedule, param_groups

__all__ = [
    "Task",
    "Classification",
    "MultilabelClassification",
    "MaskedByteModelling",
    "OpticalFlow",
    "MultimodalAutoencoding",
    "mask_tokens",
    "Lamb",
    "LRSchedule",
    "param_groups",
]
