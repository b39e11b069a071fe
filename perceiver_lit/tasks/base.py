"""The shared spine of every task: the wrapped net, optimizer, per-step schedule, FSDP2 hook, bookkeeping logs.

A task builds nothing model-specific: `net` arrives built (LightningCLI instantiates it from its `class_path`), and
the task owns only loss, metrics, optimizer and schedule. Subclasses implement `shared_step`.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from perceiver_lit.lightning_private import hparams_given_by_cli, is_compiled
from perceiver_lit.tasks.optim import LRSchedule, build_optimizer, fused_adamw_allowed


class Task(pl.LightningModule):
    """Base task.

    Args:
        net: the model (`forward(inputs, pad_mask=None) -> logits`), chosen in config by class_path.
        num_classes: classes (or vocab for MLM); the CLI links it from `data.num_classes`. Defaults to
            `net.num_classes`.
        optimizer: "adamw" or "lamb" (the papers' choice). Weight decay skips `net.no_weight_decay()`.
        lr, weight_decay, betas, eps: optimizer settings (lr is the peak lr).
        decay_embeddings: decay the latent, position and query arrays too, sparing only biases and norms
            (DeepMind's ImageNet setting, `decay_pos_embs=True`); off: they take no decay (timm, nanoGPT).
        schedule: "constant", "step" (x decay_factor at each of decay_epochs) or "cosine" (flat for flat_epochs,
            then cosine to 0 at the end of training). Steps per epoch come from the trainer's estimate.
        warmup_epochs: linear warm-up (fractional epochs allowed); 0 in the papers.
        warmup_steps: the same in optimizer steps, for step-based runs (give one of the two).
        reference_batch_size: the global batch the recipe's lr was tuned at (ImageNet: 1024). At fit start the
            task prints the global batch (per-device batch x devices x nodes x accumulation) and warns, naming
            the fields and the linearly scaled lr, when it differs.
        compile: wrap the net with torch.compile in configure_model.
        freeze: glob patterns over the net's parameter names (`fnmatch`: "adapter.*", "encoder.*"); matching
            parameters get requires_grad=False and stay out of the optimizer (fine-tuning). A BatchNorm whose
            parameters are all frozen also keeps its running statistics (eval mode in training).
        body_lr_scale: the lr of every parameter outside `head` is lr x body_lr_scale (e.g. 0.1: the pretrained
            body learns 10x slower than the new head; docs/training.md, "Fine-tuning"). 1.0: one lr.
        head: glob patterns of the head's parameter names, for body_lr_scale.
        class_names: the class names (index = position); the CLI links them from `data.class_names`. Saved in the
            checkpoint's hyperparameters, so predictions carry names even on data that has none.
    """

    #: the validation metric that picks the best checkpoint, and whether higher is better.
    monitor: tuple[str, str] = ("val/loss", "min")

    def __init__(
        self,
        net: nn.Module,
        num_classes: int | None = None,
        optimizer: Literal["adamw", "lamb"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        decay_embeddings: bool = False,
        schedule: Literal["constant", "step", "cosine"] = "cosine",
        warmup_epochs: float = 0.0,
        warmup_steps: int = 0,
        decay_epochs: list[float] | None = None,
        decay_factor: float = 0.1,
        flat_epochs: float = 0.0,
        reference_batch_size: int | None = None,
        compile: bool = False,
        freeze: list[str] | None = None,
        body_lr_scale: float = 1.0,
        head: list[str] | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        # From LightningCLI the hyperparameters are its config, with `net`'s class_path, which is what
        # load_from_checkpoint needs to rebuild the net; built in Python, `net` is a module and stays out.
        self.save_hyperparameters(ignore=[] if hparams_given_by_cli() else ["net"])
        self.net = net
        if num_classes is None:
            num_classes = getattr(net, "num_classes", None) or getattr(
                getattr(net, "config", None), "num_classes", None
            )
        if num_classes is None:
            raise ValueError(
                f"{type(self).__name__}: num_classes is unknown: pass model.init_args.num_classes or give the net a "
                "`num_classes` attribute (the CLI links it from data.num_classes)"
            )
        self.num_classes = int(num_classes)
        self.optimizer_name = optimizer
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, tuple(betas), eps
        self.decay_embeddings = decay_embeddings
        self.schedule = schedule
        if warmup_epochs > 0 and warmup_steps > 0:
            raise ValueError(
                f"model.init_args.warmup_epochs ({warmup_epochs}) and warmup_steps ({warmup_steps}): "
                "give one of the two"
            )
        if warmup_steps < 0 or warmup_epochs < 0:
            raise ValueError("model.init_args.warmup_epochs / warmup_steps must be >= 0")
        self.warmup_epochs, self.warmup_steps, self.flat_epochs = warmup_epochs, int(warmup_steps), flat_epochs
        if reference_batch_size is not None and reference_batch_size < 1:
            raise ValueError(f"model.init_args.reference_batch_size must be >= 1, got {reference_batch_size}")
        self.reference_batch_size = reference_batch_size
        self.decay_epochs, self.decay_factor = list(decay_epochs or []), decay_factor
        self.compile_net = compile
        self.class_names = list(class_names) if class_names else None
        if schedule == "step" and not self.decay_epochs:
            raise ValueError("model.init_args.decay_epochs: schedule 'step' needs the epochs to decay at")
        # (not self.freeze: LightningModule.freeze() is a method)
        self.freeze_patterns, self.head_patterns = list(freeze or []), list(head or ["head.*"])
        if not 0.0 < body_lr_scale <= 1.0:
            raise ValueError(f"model.init_args.body_lr_scale must be in (0, 1], got {body_lr_scale}")
        self.body_lr_scale = body_lr_scale
        if self.freeze_patterns:
            self._freeze_parameters()
        if body_lr_scale != 1.0:
            self._matching("head", self.head_patterns)  # a pattern that matches nothing fails here, before training

    # ---- fine-tuning: frozen parameters, a slower body ----------------------------------------------------------

    def _net_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The net's named parameters, without torch.compile's `_orig_mod.` prefix."""
        return [(n.removeprefix("_orig_mod."), p) for n, p in self.net.named_parameters()]

    def _matching(self, field: str, patterns: list[str]) -> set[str]:
        """Names of the net's parameters that match any of `patterns`; a pattern that matches none is an error."""
        names = [n for n, _ in self._net_parameters()]
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                examples = [
                    n
                    for i, n in enumerate(names)  # the first name under each top-level module
                    if n.split(".")[0] not in {m.split(".")[0] for m in names[:i]}
                ][:8]
                raise ValueError(
                    f"model.init_args.{field}: {pattern!r} matches no parameter of the net "
                    f"({type(self.net).__name__}); its names look like {', '.join(examples)}"
                )
        return {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}

    def _freeze_parameters(self) -> None:
        frozen_names = self._matching("freeze", self.freeze_patterns)
        frozen = trainable = 0
        for name, p in self._net_parameters():
            if name in frozen_names:
                p.requires_grad_(False)
                frozen += p.numel()
            elif p.requires_grad:
                trainable += p.numel()
        rank_zero_info(
            f"[perceiver-lit] freeze {self.freeze_patterns}: {frozen:,} parameters frozen "
            f"({len(frozen_names)} tensors), {trainable:,} trainable"
        )

    def _keep_frozen_norms(self) -> None:
        """A BatchNorm whose parameters are all frozen keeps its running statistics too: eval mode in training.
        Lightning keeps each module's mode across its evaluation loops, so setting it at train start holds."""
        if not self.freeze_patterns:
            return
        for m in self.net.modules():
            params = list(m.parameters(recurse=False))
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and params and not any(p.requires_grad for p in params):
                m.eval()

    def train(self, mode: bool = True) -> Task:
        super().train(mode)
        if mode:
            self._keep_frozen_norms()
        return self

    def _scale_body_lr(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The same optimizer with each group split into head (lr) and body (lr x body_lr_scale)."""
        if self.body_lr_scale == 1.0:
            return optimizer
        head = {id(p) for n, p in self._net_parameters() if n in self._matching("head", self.head_patterns)}
        groups = []
        for g in optimizer.param_groups:
            for in_head, scale in ((True, 1.0), (False, self.body_lr_scale)):
                params = [p for p in g["params"] if (id(p) in head) == in_head]
                if params:
                    groups.append(
                        {**{k: v for k, v in g.items() if k != "params"}, "params": params, "lr": g["lr"] * scale}
                    )
        optimizer.param_groups = []  # no state yet: regroup in place (keeps the optimizer's own settings)
        for g in groups:
            optimizer.add_param_group(g)
        return optimizer

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A net built by perceiver_lit.models.pretrained records its architecture, so that the checkpoint alone
        # rebuilds it (without the file it came from).
        net = getattr(self.net, "_orig_mod", self.net)
        spec = getattr(net, "pretrained_spec", None)
        if spec is not None:
            checkpoint["net_spec"] = spec

    # ---- model ------------------------------------------------------------------------------------------------

    def forward(self, inputs: Any, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        if pad_mask is None:
            return self.net(inputs)
        return self.net(inputs, pad_mask=pad_mask)

    def configure_model(self) -> None:
        # FSDP2 (ModelParallelStrategy) hands us a device mesh; the sharding plan lives in perceiver_lit.distributed,
        # imported lazily so single-device runs never import torch.distributed's FSDP.
        mesh = getattr(self, "device_mesh", None)
        if mesh is not None:
            from perceiver_lit.distributed import shard_model

            # The strategy's sharding options (FSDP2Strategy.shard_options); another ModelParallelStrategy: defaults.
            shard_model(self.net, mesh, getattr(self.trainer.strategy, "shard_options", None))
        if self.compile_net and not is_compiled(self.net):
            self.net = torch.compile(self.net)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # `perceiver-lit predict --ckpt_path` on data without classes.json: the names the model was trained with
        saved = (checkpoint.get("hyper_parameters") or {}).get("class_names")
        if saved and self.class_names is None:
            self.class_names = list(saved)
        super().on_load_checkpoint(checkpoint)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    # ---- steps (subclasses implement shared_step) -------------------------------------------------------------

    def shared_step(self, batch: dict, stage: str, batch_idx: int) -> torch.Tensor:
        raise NotImplementedError

    def log_loss(self, stage: str, loss: torch.Tensor, batch_size: int) -> None:
        """`<stage>/loss`: per step and per epoch in training, per epoch (averaged over ranks) in eval."""
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
            sync_dist=stage != "train",
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "train", batch_idx)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.shared_step(batch, "val", batch_idx)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.shared_step(batch, "test", batch_idx)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        logits = self(batch["inputs"], batch.get("pad_mask"))
        return {"key": batch.get("key"), "logits": logits}

    # ---- bookkeeping ------------------------------------------------------------------------------------------

    def global_batch_size(self) -> tuple[int, str] | None:
        """(samples per optimizer step over all ranks, how it is made up), from the data module's per-device
        `batch_size`; None without a data module that has one."""
        per_device = getattr(getattr(self.trainer, "datamodule", None), "batch_size", None)
        if not isinstance(per_device, int):
            return None
        trainer = self.trainer
        accumulate = max(1, int(trainer.accumulate_grad_batches))
        total = per_device * trainer.world_size * accumulate
        return total, (
            f"{per_device} per device (data.init_args.batch_size) x {trainer.num_devices} devices x "
            f"{trainer.num_nodes} nodes x {accumulate} accumulated (trainer.accumulate_grad_batches)"
        )

    def on_fit_start(self) -> None:
        found = self.global_batch_size()
        if found is None:
            return
        total, parts = found
        rank_zero_info(f"[perceiver-lit] global batch {total} = {parts}")
        ref = self.reference_batch_size
        if ref is not None and total != ref:
            rank_zero_warn(
                f"Global batch {total} = {parts}, but the recipe's lr {self.lr:g} was tuned at a global batch of "
                f"{ref} (model.init_args.reference_batch_size). Raise trainer.num_nodes / trainer.devices or "
                f"trainer.accumulate_grad_batches to reach {ref}, or scale the lr linearly: "
                f"--model.init_args.lr {self.lr * total / ref:.3g}, and set reference_batch_size to {total} "
                "to silence this."
            )

    def _warn_if_the_restored_schedule_ends_early(self) -> None:
        """A run resumed with a larger max_epochs / max_steps keeps its checkpoint's schedule (an exact resume): a
        cosine that reached 0 at the old end trains on at lr 0. Say so at the start, not after the run."""
        configs = self.trainer.lr_scheduler_configs
        fn = getattr(configs[0].scheduler, "lr_lambdas", [None])[0] if configs else None
        if not isinstance(fn, LRSchedule) or fn.kind != "cosine" or not fn.total_steps:
            return
        try:
            planned = self.total_steps()
        except ValueError:
            return
        if planned > fn.total_steps:
            rank_zero_warn(
                f"The schedule restored from the checkpoint ends at step {fn.total_steps} (lr 0 from there), but this "
                f"run goes on to step {planned}: trainer.max_epochs / max_steps grew since the checkpoint was saved. "
                "Steps after the old end train at lr 0. Resume with the original length, or start a new run (no "
                "--ckpt_path) for a new schedule."
            )

    def on_train_start(self) -> None:
        self._keep_frozen_norms()  # Lightning (>= 2.2) does not call train() at fit start
        self._warn_if_the_restored_schedule_ends_early()
        # self.log is not allowed before the first step's hooks; write straight to the loggers, once.
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics({"model/params": float(self.num_parameters())}, step=self.global_step)

    # ---- optimizer and schedule -------------------------------------------------------------------------------

    def steps_per_epoch(self) -> float:
        """Optimizer steps per epoch, from the trainer's estimate (loads the train loader if needed)."""
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if trainer.train_dataloader is None:  # max_epochs -1: estimated_stepping_batches does not load the loader
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:
            return batches / max(1, trainer.accumulate_grad_batches)
        if math.isfinite(total) and trainer.max_epochs and trainer.max_epochs > 0:
            return total / trainer.max_epochs
        raise ValueError(
            "The schedule is given in epochs but the train loader has no length: set the data module's epoch size "
            "(samples per epoch) or trainer.max_epochs with a sized loader"
        )

    def total_steps(self) -> int:
        """Optimizer steps the run will take: the first of max_steps and max_epochs to be reached."""
        trainer = self.trainer
        by_steps = int(trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else None
        if trainer.max_epochs is None or trainer.max_epochs < 0:
            if by_steps is None:
                raise ValueError("schedule 'cosine' needs trainer.max_steps or trainer.max_epochs")
            return by_steps
        try:
            by_epochs = int(round(self.steps_per_epoch() * trainer.max_epochs))
        except ValueError:
            if by_steps is None:
                raise
            return by_steps
        return by_epochs if by_steps is None else min(by_steps, by_epochs)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Lightning's classic FSDP (configs/trainer/fsdp_classic.yaml) refuses norm clipping in its precision plugin
        # ("gradient_clip_algorithm='norm' is currently not supported"), and every recipe clips: clip with the root
        # FSDP unit's clip_grad_norm_, the norm over all shards. GPU-only (Lightning refuses FSDP1 on CPU), so
        # checked by benchmarks/gpu_check.sh (step preset_fsdp_classic_lamb), not by the CPU suite.
        from lightning.pytorch.strategies import FSDPStrategy

        strategy = self.trainer.strategy
        if (
            gradient_clip_val
            and isinstance(strategy, FSDPStrategy)
            and getattr(gradient_clip_algorithm, "value", gradient_clip_algorithm) in (None, "norm")
        ):
            strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(
            optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
        )

    def configure_optimizers(self) -> dict:
        # Fused AdamW only where the precision plugin and clipping allow it (bf16-mixed + clipping: issue 19).
        trainer = self._trainer
        fused = trainer is None or fused_adamw_allowed(trainer.precision_plugin, trainer.gradient_clip_val)
        optimizer = build_optimizer(
            self.optimizer_name,
            self.net,
            self.lr,
            self.weight_decay,
            self.betas,
            self.eps,
            fused=fused,
            decay_embeddings=self.decay_embeddings,
        )
        optimizer = self._scale_body_lr(optimizer)
        # Steps per epoch are needed only for what is stated in epochs (the loader may have no length otherwise).
        needs_epochs = self.warmup_epochs > 0 or self.flat_epochs > 0 or (self.schedule == "step")
        needs_epochs |= self.schedule == "cosine" and not (self.trainer.max_steps and self.trainer.max_steps > 0)
        spe = self.steps_per_epoch() if needs_epochs else 1.0
        schedule = LRSchedule(
            self.schedule,
            total_steps=self.total_steps() if self.schedule == "cosine" else None,
            warmup_steps=self.warmup_steps or round(self.warmup_epochs * spe),
            decay_steps=[round(e * spe) for e in self.decay_epochs],
            decay_factor=self.decay_factor,
            flat_steps=round(self.flat_epochs * spe),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
