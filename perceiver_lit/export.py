"""`perceiver-lit-export`: a trained net as ONNX, a torch.export ExportedProgram, or a Hugging Face folder.

    perceiver-lit-export --ckpt runs/x/checkpoints/best.ckpt --format onnx               # -> best.onnx
    perceiver-lit-export --ckpt best.ckpt --format exported-program --out best.pt2
    perceiver-lit-export --ckpt best.ckpt --format hf --out hf-model/

The net (not the Lightning task) is exported with a dynamic batch size: input `inputs` (the data module's
`input_shape` with a batch dimension in front, float32, or int64 token ids for text, which also take `pad_mask`,
bool, True at padding), output `logits`. Fourier position features (and Fourier queries) are computed once for the
fixed input grid and baked into the graph as constants, so the exported model does no trigonometry. The class
names (when the checkpoint has them) go into the file: ONNX metadata `class_names` (a JSON list), the exported
program's extra file `class_names.json`. A model that torch.export cannot trace fails with one line naming the
innermost module that does not trace, and the first line of the tracer's reason.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

FORMATS = ("onnx", "exported-program", "hf")


class ExportError(RuntimeError):
    """An export that failed; the message names the module that could not be traced."""


# --------------------------------------------------------------------------------------- preparing the net
def _baked_forward(
    module: nn.Module, index_dims: Sequence[int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """A FourierPositionEncoding's forward once baked: the features computed for the grid seen at export."""
    return module.baked.to(dtype)  # (N, P)


def bake_fourier_features(net: nn.Module, example: tuple[Any, ...]) -> nn.Module:
    """A copy of `net` whose Fourier position encodings are constants for the grid of `example`."""
    from perceiver_lit.models.position import FourierPositionEncoding

    net = copy.deepcopy(net).eval()
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in net.named_modules():
        if isinstance(module, FourierPositionEncoding):
            handles.append(module.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out)))
    with torch.no_grad():
        net(*example)
    for h in handles:
        h.remove()
    for name, feats in seen.items():
        module = net.get_submodule(name)
        module.register_buffer("baked", feats.detach().clone(), persistent=False)  # a constant of the graph
        module.forward = functools.partial(_baked_forward, module)
    return net


def example_inputs(net: nn.Module, input_shape: Any, batch: int = 2) -> tuple[Any, ...]:
    """Inputs shaped like the data: (B, *input_shape) float32, or int64 tokens + a bool pad_mask for text."""
    adapter = getattr(net, "adapter", None)
    tokens = adapter is not None and any(isinstance(m, nn.Embedding) for m in adapter.modules())
    if isinstance(input_shape, dict):
        return ({k: torch.randn(batch, *s) for k, s in input_shape.items()},)
    if tokens:
        vocab = next(m for m in adapter.modules() if isinstance(m, nn.Embedding)).num_embeddings
        ids = torch.randint(6, vocab, (batch, *input_shape))
        return ids, torch.zeros(batch, *input_shape, dtype=torch.bool)
    return (torch.randn(batch, *input_shape),)


def _dynamic_shapes(example: tuple[Any, ...]) -> tuple[Any, ...]:
    batch = torch.export.Dim("batch", min=1, max=65536)

    def dims(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: dims(v) for k, v in x.items()}
        return {0: batch}

    return tuple(dims(x) for x in example)


# ----------------------------------------------------------------------------------------- finding culprits
def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        if line.strip():
            return f"{type(e).__name__}: {line.strip()}"[:300]
    return type(e).__name__


def culprit(net: nn.Module, example: tuple[Any, ...]) -> tuple[str, nn.Module, BaseException] | None:
    """The innermost submodule that torch.export cannot trace on its own inputs (recorded in one eager run)."""
    calls: dict[str, tuple[tuple, dict]] = {}
    handles = [
        m.register_forward_pre_hook(
            lambda m, a, k, name=name: calls.setdefault(name, (a, k)) and None, with_kwargs=True
        )
        for name, m in net.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            net(*example)
    except Exception:  # noqa: BLE001 - the net fails in eager mode too: no module to single out
        return None
    finally:
        for h in handles:
            h.remove()

    def fails(module: nn.Module, name: str) -> BaseException | None:
        args, kwargs = calls[name]
        try:
            torch.export.export(module, args, kwargs, strict=False)
        except Exception as e:  # noqa: BLE001 - any tracer failure
            return e
        return None

    found = None
    children = [(n, m) for n, m in net.named_children()]
    prefix = ""
    while children:
        for name, module in children:
            full = f"{prefix}{name}"
            if full not in calls:
                continue
            error = fails(module, full)
            if error is not None:
                found = (full, module, error)
                prefix = full + "."
                children = list(module.named_children())
                break
        else:
            break
    return found


def _traced(net: nn.Module, example: tuple[Any, ...], what: str, run) -> Any:
    """run() the export; any failure becomes an ExportError naming the module that does not trace."""
    try:
        return run()
    except Exception as e:  # noqa: BLE001 - the tracer raises many kinds; all become one line
        where = culprit(net, example)
        if where is None:
            raise ExportError(f"cannot export {type(net).__name__} to {what}: {_first_line(e)}") from None
        name, module, error = where
        raise ExportError(
            f"cannot export {type(net).__name__} to {what}: module '{name}' ({type(module).__name__}) "
            f"does not trace: {_first_line(error)}"
        ) from None


# ------------------------------------------------------------------------------------------------- exporters
def export_program(net: nn.Module, example: tuple[Any, ...]) -> torch.export.ExportedProgram:
    """torch.export of `net` (Fourier features baked) with a dynamic batch dimension."""
    baked = bake_fourier_features(net, example)
    return _traced(
        baked,
        example,
        "torch.export",
        lambda: torch.export.export(baked, example, dynamic_shapes=_dynamic_shapes(example), strict=False),
    )


def save_exported_program(
    net: nn.Module, example: tuple[Any, ...], path: str, class_names: Sequence[str] | None = None
) -> str:
    program = export_program(net, example)
    extra = {"class_names.json": json.dumps(list(class_names or []))}
    torch.export.save(program, path, extra_files=extra)
    return path


def save_onnx(net: nn.Module, example: tuple[Any, ...], path: str, class_names: Sequence[str] | None = None) -> str:
    """ONNX (torch.onnx's dynamo exporter, from the same ExportedProgram), batch dimension dynamic; class names
    in the model's metadata_props as `class_names`."""
    import onnx

    program = export_program(net, example)
    names = ["inputs", "pad_mask"][: len(example)] if not isinstance(example[0], dict) else None
    onnx_program = _traced(
        net,
        example,
        "ONNX",
        lambda: torch.onnx.export(
            program, example, input_names=names, output_names=["logits"], dynamo=True, verbose=False
        ),
    )
    onnx_program.save(path)
    model = onnx.load(path)
    entry = model.metadata_props.add()
    entry.key, entry.value = "class_names", json.dumps(list(class_names or []))
    onnx.save(model, path)
    return path


# ----------------------------------------------------------------------------------------------------- the CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perceiver-lit-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a `perceiver-lit fit` checkpoint (.ckpt)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="onnx, exported-program (torch.export) or hf")
    parser.add_argument(
        "--out", default=None, help="output file (default: the checkpoint's path with .onnx / .pt2) or folder (hf)"
    )
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.ckpt, args.format, args.out)
    except (ExportError, ValueError, OSError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"exported {args.ckpt} ({args.format}) -> {out}")
    return 0


def export_checkpoint(ckpt: str, fmt: str, out: str | None = None) -> str:
    """Export the net of a checkpoint; returns the path written."""
    from perceiver_lit.inference import _import, build_task, read_checkpoint, saved_data_config

    state = read_checkpoint(ckpt)
    task = build_task(state, ckpt)
    net = task.net.eval()
    if fmt == "hf":
        from perceiver_lit.hf_export import save_huggingface  # lazily: only this format needs transformers

        out = out or os.path.splitext(ckpt)[0] + "-hf"
        save_huggingface(net, out)
        return out
    cfg = saved_data_config(state, ckpt)
    init = {k: v for k, v in (cfg.get("init_args") or {}).items() if not k.endswith("_urls")}
    dm = _import(cfg["class_path"], "data module", ckpt)(**{**init, "num_workers": 0})
    example = example_inputs(net, dm.input_shape)
    names = getattr(task, "class_names", None)
    if fmt == "onnx":
        return save_onnx(net, example, out or os.path.splitext(ckpt)[0] + ".onnx", names)
    if fmt == "exported-program":
        return save_exported_program(net, example, out or os.path.splitext(ckpt)[0] + ".pt2", names)
    raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")


if __name__ == "__main__":
    sys.exit(main())
