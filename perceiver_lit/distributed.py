"""Distributed training helpers: FSDP2 sharding of a Perceiver, the FSDP2 strategy, checkpoint consolidation, and a
clean process-group shutdown.

- `shard_model(net, device_mesh)`: applies `torch.distributed.fsdp.fully_shard` (FSDP2) to every cross-attention and
  self-attention layer, then to the root. The Perceiver shares layers across repeated blocks: a shared module is one
  object, so it is sharded once (its repeated calls all-gather it again, which FSDP2 supports).
- `FSDP2Strategy`: Lightning's `ModelParallelStrategy` with pure data-parallel sharding over all ranks (the parent's
  default mesh is nodes x GPUs-per-node for tensor parallelism) and our sharding options (mixed precision,
  activation checkpointing). The task's `configure_model()` calls
  `shard_model(self.net, self.device_mesh, trainer.strategy.shard_options)`.
- `consolidate_checkpoint(src_dir, dst_file)`: a sharded (distributed) checkpoint folder -> one ordinary Lightning
  checkpoint file. Command line: `python -m perceiver_lit.distributed consolidate SRC_DIR DST_FILE`.
- `destroy_process_group()` and the `DestroyProcessGroup` callback: tear the process group down after `fit`, or gloo
  sometimes aborts at interpreter exit.

Lightning's classic `fsdp` strategy (FSDP1) refuses CPU; FSDP2 runs on CPU (gloo) and GPU (NCCL) with the same code.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

# The layers FSDP2 wraps (one all-gather unit each). Names, not imports: the models import nothing from here.
DEFAULT_LAYER_CLASSES = ("CrossAttentionLayer", "SelfAttentionLayer", "DenseDecoder")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ShardOptions:
    """How `shard_model` shards: set by `FSDP2Strategy`, or passed to `shard_model` directly."""

    layer_classes: tuple[str, ...] = DEFAULT_LAYER_CLASSES
    param_dtype: str | None = None  # all-gathered parameters and compute; None keeps float32
    reduce_dtype: str | None = None  # gradient reduce-scatter; None follows param_dtype
    activation_checkpointing: bool = False
    reshard_after_forward: bool = True  # False keeps gathered params until backward (more memory, fewer gathers)


def _dtype(name: str | None, field: str) -> torch.dtype | None:
    if name is None:
        return None
    if name not in _DTYPES:
        raise ValueError(f"FSDP2Strategy {field}={name!r}: expected one of {sorted(_DTYPES)} or null")
    return _DTYPES[name]


def _data_parallel_mesh(device_mesh: Any) -> Any:
    """The 1-D mesh to shard over. Lightning's mesh is 2-D (data_parallel, tensor_parallel); we use no tensor
    parallelism, so the tensor-parallel dimension must have size 1."""
    if device_mesh is None or device_mesh.ndim == 1:
        return device_mesh
    names = device_mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and device_mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"shard_model: the device mesh {dict(zip(names, device_mesh.shape))} has a tensor-parallel dimension > 1;"
            " perceiver-lit shards data-parallel only. Use perceiver_lit.distributed.FSDP2Strategy (configs/trainer/"
            "fsdp.yaml), or ModelParallelStrategy(data_parallel_size=<world size>, tensor_parallel_size=1)."
        )
    return device_mesh["data_parallel"]


def shard_targets(net: nn.Module, layer_classes: tuple[str, ...] = DEFAULT_LAYER_CLASSES) -> list[nn.Module]:
    """The modules to shard, innermost first, each once.

    A module shared across blocks appears once (named_modules dedups by identity). A module whose parameters overlap
    an earlier target's (tied weights across different modules) is left to the root unit, since a parameter can
    belong to only one FSDP unit.
    """
    targets: list[nn.Module] = []
    claimed: set[int] = set()
    # A DenseDecoder calls its cross-attention's project_kv (k, v of the latents, once for all query chunks) outside
    # that layer's forward, where FSDP2's hooks do not gather the layer's parameters: the decoder is the unit.
    dense = {id(m.cross) for m in net.modules() if type(m).__name__ == "DenseDecoder"}
    modules = [
        m
        for _, m in net.named_modules()
        if m is not net
        and id(m) not in dense
        and (type(m).__name__ in layer_classes or type(m).__name__ == "DenseDecoder")
    ]
    for module in reversed(modules):  # children before parents: fully_shard must see inner units first
        params = {id(p) for p in module.parameters()}
        inner = {id(p) for t in targets if _is_descendant(t, module) for p in t.parameters()}
        if (params - inner) & claimed:
            continue
        targets.append(module)
        claimed |= params
    return targets


def _is_descendant(child: nn.Module, parent: nn.Module) -> bool:
    return any(m is child for m in parent.modules())


def shard_model(net: nn.Module, device_mesh: Any, options: ShardOptions | None = None) -> nn.Module:
    """Shard `net` in place with FSDP2 over the data-parallel ranks of `device_mesh`; returns `net`.

    Each cross-/self-attention layer becomes an all-gather unit, then the root takes the rest (adapter, latents,
    head). With `activation_checkpointing`, each unit recomputes its activations in backward (composable checkpoint,
    which keeps parameter names, so checkpoints stay loadable without FSDP).
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if isinstance(net, FSDPModule):  # configure_model runs again for a later stage: shard once
        return net
    opts = options or ShardOptions()
    mesh = _data_parallel_mesh(device_mesh)
    mp = MixedPrecisionPolicy(
        param_dtype=_dtype(opts.param_dtype, "param_dtype"), reduce_dtype=_dtype(opts.reduce_dtype, "reduce_dtype")
    )
    targets = shard_targets(net, tuple(opts.layer_classes))
    if not targets:
        raise ValueError(
            f"shard_model: {type(net).__name__} has no module of the classes {list(opts.layer_classes)}; set"
            " FSDP2Strategy(layer_classes=[...]) to the class names of its attention layers"
        )
    if opts.activation_checkpointing:
        from perceiver_lit.lightning_private import checkpoint_activations

        for module in targets:
            if not getattr(module, "checkpoint", False):  # the model's own switch already recomputes this layer
                checkpoint_activations(module)
    for module in targets:
        fully_shard(module, mesh=mesh, mp_policy=mp, reshard_after_forward=opts.reshard_after_forward)
    # The root hands float32 logits to the loss even when it computes in bf16.
    root_mp = MixedPrecisionPolicy(
        param_dtype=mp.param_dtype,
        reduce_dtype=mp.reduce_dtype,
        output_dtype=torch.float32 if mp.param_dtype is not None else None,
    )
    fully_shard(net, mesh=mesh, mp_policy=root_mp, reshard_after_forward=opts.reshard_after_forward)
    return net


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 (`fully_shard`) over all ranks, through Lightning's ModelParallelStrategy.

    The parent defaults to a (nodes, GPUs per node) mesh meant for tensor parallelism; here the data-parallel size
    is the world size and the tensor-parallel size 1, so every rank is a data-parallel replica and gets its own data.

    Args:
        param_dtype: dtype of gathered parameters and of compute (`bfloat16` for bf16 mixed precision, null: fp32).
        reduce_dtype: dtype of the gradient reduce-scatter (`float32` keeps the reduction exact).
        activation_checkpointing: recompute each attention layer's activations in backward.
        layer_classes: class names of the layers that become FSDP units.
        reshard_after_forward: free gathered parameters after forward (True, ZeRO-3 like) or keep them (ZeRO-2).
        save_distributed_checkpoint: each rank writes its shard (a folder; consolidate with
            `python -m perceiver_lit.distributed consolidate`), or rank 0 writes one full file.
    """

    def __init__(
        self,
        param_dtype: Literal["bfloat16", "float16", "float32"] | None = "bfloat16",
        reduce_dtype: Literal["bfloat16", "float16", "float32"] | None = "float32",
        activation_checkpointing: bool = False,
        layer_classes: tuple[str, ...] = DEFAULT_LAYER_CLASSES,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
        )
        _dtype(param_dtype, "param_dtype"), _dtype(reduce_dtype, "reduce_dtype")  # fail early on a typo
        self.shard_options = ShardOptions(
            layer_classes=tuple(layer_classes),
            param_dtype=param_dtype,
            reduce_dtype=reduce_dtype,
            activation_checkpointing=activation_checkpointing,
            reshard_after_forward=reshard_after_forward,
        )

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """A sharded folder is written beside its target (`.<name>.tmp`), then swapped in by rank 0: a kill during
        the save leaves the previous folder whole (a single file goes through AtomicCheckpointIO)."""
        if not self._save_distributed_checkpoint or storage_options is not None:
            return super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)
        import os
        import shutil

        path = Path(self.broadcast(str(filepath)))
        tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
        if self.global_rank == 0 and tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        self.barrier("FSDP2Strategy.save_checkpoint:start")
        super().save_checkpoint(checkpoint, tmp)
        self.barrier("FSDP2Strategy.save_checkpoint:written")
        if self.global_rank == 0:
            for stale in (old,) if old.exists() else ():
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        self.barrier("FSDP2Strategy.save_checkpoint:swapped")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        # ModelParallelStrategy loads without the CheckpointIO: run the CLI's resume check (on_load, see
        # perceiver_lit/checkpoint_io.py) here, on the metadata, before any state is loaded into the model.
        on_load = getattr(self.checkpoint_io, "on_load", None)
        path = Path(self.broadcast(str(checkpoint_path)))
        if on_load is not None:
            from perceiver_lit.checkpoint_io import read_checkpoint

            if path.is_dir() and (path / "meta.pt").is_file():
                on_load(str(path), torch.load(path / "meta.pt", map_location="cpu", weights_only=True))
            elif path.is_file():
                on_load(str(path), read_checkpoint(path, mmap=True))
        return super().load_checkpoint(checkpoint_path, weights_only=weights_only)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


# --- process group shutdown ------------------------------------------------------------------------------------


def destroy_process_group(barrier: bool = True) -> None:
    """Destroy the default process group if one is up; a no-op otherwise. With `barrier`, first wait for every rank
    (so none leaves while another still talks): call it that way only when all ranks finished normally; after an
    error use `barrier=False`, or a surviving rank would wait for a dead one until the timeout."""
    if dist.is_available() and dist.is_initialized():
        try:
            if barrier:
                dist.barrier()
        finally:
            dist.destroy_process_group()


class DestroyProcessGroup(Callback):
    """Destroys the process group when `fit`/`validate`/`test` ends (Lightning leaves it to interpreter exit, where
    gloo sometimes aborts). The next stage in the same process re-creates it."""

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        destroy_process_group()


# --- sharded checkpoints -----------------------------------------------------------------------------------------


def consolidate_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Turn a sharded checkpoint folder (written by `FSDP2Strategy(save_distributed_checkpoint=True)`) into one
    Lightning checkpoint file: full `state_dict` (unsharded, fp32), `optimizer_states`, loops, callbacks, hparams.

    Runs in one process, without a process group; the whole model must fit in CPU memory.
    """
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from perceiver_lit.checkpoint_io import atomic_torch_save

    src, dst = Path(src), Path(dst)
    if not (src.is_dir() and (src / "meta.pt").is_file() and (src / ".metadata").is_file()):
        raise FileNotFoundError(f"{src} is not a sharded checkpoint folder (expected .metadata and meta.pt in it)")
    # torch's public converter writes the full state dict to a file (what Lightning's private
    # `_load_distributed_checkpoint` reads into memory); memory-mapped back, then meta.pt (Lightning's non-tensor part)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=f".{dst.name}.") as tmp:
        dcp_to_torch_save(src, Path(tmp) / "full.pt")
        ckpt = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=True, mmap=True)
        ckpt.update(torch.load(src / "meta.pt", map_location="cpu", weights_only=True))
        optimizer_keys = sorted((k for k in ckpt if re.fullmatch(r"optimizer_\d+", k)), key=lambda k: int(k[10:]))
        ckpt["optimizer_states"] = [ckpt.pop(k) for k in optimizer_keys]
        atomic_torch_save(ckpt, dst)  # temp file beside dst, then os.replace: never a torn model.ckpt
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perceiver_lit.distributed", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("consolidate", help="sharded checkpoint folder -> one checkpoint file")
    c.add_argument("src", type=Path, help="the sharded checkpoint folder (e.g. checkpoints/last.ckpt/)")
    c.add_argument("dst", type=Path, help="the file to write")
    args = parser.parse_args(argv)
    out = consolidate_checkpoint(args.src, args.dst)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
