"""The private Lightning and torch APIs perceiver_lit/lightning_private.py relies on are still there and still do
what we use them for. A failure names the API: an upgrade changed it, and the adapter must follow."""

from __future__ import annotations

import copy
import inspect

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, _InstantiatorFn
from lightning.pytorch.core.mixins import hparams_mixin
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

from perceiver_lit.callbacks import Checkpoint
from perceiver_lit.cli import PerceiverCLI
from perceiver_lit.lightning_private import (
    checkpoint_activations,
    hparams_given_by_cli,
    is_compiled,
    last_checkpoints,
    mark_sigterm_received,
    uncount_restored_step,
)


def _source(obj) -> str:
    return inspect.getsource(obj)


def test_lightning_cli_parse_ckpt_path_is_called_after_parsing():
    api = "LightningCLI._parse_ckpt_path"
    assert "self._parse_ckpt_path()" in _source(LightningCLI.__init__), (
        f"{api}: LightningCLI.__init__ no longer calls it"
    )
    assert list(inspect.signature(LightningCLI._parse_ckpt_path).parameters) == ["self"], f"{api}: signature changed"
    assert PerceiverCLI.check_ckpt_path is not LightningCLI._parse_ckpt_path, f"{api}: PerceiverCLI does not replace it"


def test_lightning_cli_dump_config_feeds_the_instantiator():
    api = "LightningCLI._dump_config"
    assert list(inspect.signature(LightningCLI._dump_config).parameters) == ["self"], f"{api}: signature changed"
    assert "config_dump" in _source(LightningCLI._dump_config), f"{api}: no longer writes self.config_dump"
    call = _source(_InstantiatorFn.__call__)
    assert "self.cli._dump_config()" in call and "self.cli.config_dump" in call, (
        f"{api}: lightning.pytorch.cli._InstantiatorFn no longer takes the hyperparameters from it"
    )


def test_given_hyperparameters_is_what_save_hyperparameters_reads():
    api = "lightning.pytorch.core.mixins.hparams_mixin._given_hyperparameters"
    assert "_given_hyperparameters.get()" in _source(hparams_mixin.HyperparametersMixin.save_hyperparameters), (
        f"{api}: save_hyperparameters no longer reads it"
    )
    assert not hparams_given_by_cli(), f"{api}: set outside LightningCLI's instantiation"
    with hparams_mixin._given_hyperparameters_context(hparams={"lr": 1.0}, instantiator="x"):
        assert hparams_given_by_cli(), f"{api}: not set inside _given_hyperparameters_context"
    assert not hparams_given_by_cli(), f"{api}: not reset after _given_hyperparameters_context"


def test_find_last_checkpoints_gives_the_candidates_of_ckpt_path_last(tmp_path):
    api = "ModelCheckpoint._find_last_checkpoints"
    assert list(inspect.signature(ModelCheckpoint._find_last_checkpoints).parameters) == ["self", "trainer"], (
        f"{api}: signature changed"
    )
    assert "callback._find_last_checkpoints(self.trainer)" in _source(_CheckpointConnector._parse_ckpt_path), (
        f"{api}: Lightning no longer asks it for the candidates of ckpt_path='last'"
    )
    trainer = Trainer(default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False, max_steps=1)
    cb = Checkpoint()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    # Checkpoint fills in its run-directory default before the lookup (before_find_last_checkpoints)
    assert last_checkpoints(cb, trainer) == {str((tmp_path / "checkpoints" / "last.ckpt").resolve())}, api


def test_signal_connector_received_sigterm_is_what_trainer_reads(tmp_path):
    api = "Trainer._signal_connector.received_sigterm"
    trainer = Trainer(default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False, max_steps=1)
    assert not trainer.received_sigterm
    mark_sigterm_received(trainer)
    assert trainer.received_sigterm, f"{api}: Trainer.received_sigterm no longer reads it"


def test_optimized_module_is_what_torch_compile_returns():
    api = "torch._dynamo.eval_frame.OptimizedModule"
    net = torch.nn.Linear(2, 2)
    assert not is_compiled(net), api
    assert is_compiled(torch.compile(net)), f"{api}: torch.compile(module) no longer returns one"


def test_composable_checkpoint_recomputes_a_module_with_the_same_gradients():
    api = "torch.distributed._composable.checkpoint"
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    recomputed = copy.deepcopy(plain)
    checkpoint_activations(recomputed)
    calls = {"plain": 0, "recomputed": 0}
    plain[0].register_forward_hook(lambda *_: calls.__setitem__("plain", calls["plain"] + 1))
    recomputed[0].register_forward_hook(lambda *_: calls.__setitem__("recomputed", calls["recomputed"] + 1))
    x = torch.randn(3, 4)
    plain(x).square().sum().backward()
    recomputed(x).square().sum().backward()
    assert calls == {"plain": 1, "recomputed": 2}, f"{api}: the module's forward was not run again in backward"
    for a, b in zip(plain.parameters(), recomputed.parameters()):
        assert torch.allclose(a.grad, b.grad), f"{api}: gradients differ from the plain module's"


class _LoggerSteps(Callback):
    """(global step, logger step) at each training step; with `uncount`, calls uncount_restored_step first."""

    def __init__(self, uncount: bool) -> None:
        self.uncount, self.steps = uncount, []

    def on_train_start(self, trainer, pl_module):
        if self.uncount:
            uncount_restored_step(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append((trainer.global_step, trainer.fit_loop.epoch_loop._batches_that_stepped))


def test_batches_that_stepped_is_counted_twice_on_resume_from_an_epoch_end(tmp_path):
    api = "_TrainingEpochLoop._batches_that_stepped / _should_check_val_fx, _FitLoop._data_fetcher"
    kwargs = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, limit_train_batches=4)
    kwargs.update(limit_val_batches=1, num_sanity_val_steps=0, max_epochs=100)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)  # saves at the end of the epoch, after validation
    Trainer(default_root_dir=tmp_path, max_steps=4, callbacks=[ckpt], **kwargs).fit(BoringModel())
    last = str(tmp_path / "last.ckpt")
    for uncount in (False, True):
        probe = _LoggerSteps(uncount)
        Trainer(default_root_dir=tmp_path, max_steps=6, callbacks=[probe], **kwargs).fit(BoringModel(), ckpt_path=last)
        if uncount:
            assert probe.steps == [(4, 4), (5, 5)], f"{api}: the logger step is not the global step: {probe.steps}"
        else:
            # Lightning alone: one ahead. Once an upgrade resumes this exactly, uncount_restored_step must go.
            assert probe.steps == [(4, 5), (5, 6)], f"{api}: Lightning no longer counts the step twice: {probe.steps}"
