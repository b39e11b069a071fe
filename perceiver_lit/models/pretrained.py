"""Pretrained nets from a file: `pretrained(path, num_classes=None, input_shape=None)`, the net factory.

    net: {class_path: perceiver_lit.models.pretrained, init_args: {path: vision-perceiver-conv}}
    net = perceiver_lit.models.pretrained("fourier.pt")                      # from Python: the nn.Module

`path` is one of three kinds (docs/models.md, "Pretrained nets"):
- a file written by `perceiver-lit-convert` ({"format", "spec", "state_dict"});
- an HF model folder (config.json + model.safetensors or pytorch_model.bin), converted on the fly (needs
  transformers: the `hf` extra);
- a perceiver-lit Lightning checkpoint of any task: the net's weights (`state_dict["net.*"]`) and its architecture
  (`net_spec`, or the `hyper_parameters.net` the CLI recorded). A checkpoint is read as a plain dict.

(About 400 lines because reading the three kinds and retargeting a net (classes, input shape, channels) share
one set of checks and error messages.)

The architecture is rebuilt from what the file records. `num_classes` / `input_shape` (the CLI links them from the
data module) retarget it: a new class count re-initialises the output layer; a new input shape recomputes Fourier
positions and resamples learned position tables on their grid (bicubic in 2-D, as HF's `interpolate_pos_encoding`
and timm's `resample_abs_pos_embed`); a new channel count adapts a convolutional first layer (timm's
`adapt_input_conv`: summed over RGB for grayscale), and is an error where pixels feed the attention directly.
Files are only ever read with `torch.load(weights_only=True)` or safetensors.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .position import LearnedPositionEncoding

CONVERTED_FORMAT = "perceiver-lit/converted-v1"
KINDS = (
    "a file written by perceiver-lit-convert, an HF model folder (config.json + model.safetensors or "
    "pytorch_model.bin) or a perceiver-lit Lightning checkpoint"
)
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
SELF = ("perceiver_lit.models.pretrained", "perceiver_lit.models.pretrained.pretrained")


class pretrained(nn.Module):  # noqa: N801 - a factory with a class's face, named as a function
    """The net stored at `path`, with its weights, in training mode like any freshly built module (call `.eval()`
    before inference; Lightning switches modes itself).

    `pretrained(...)` returns the rebuilt net (a Perceiver, PerceiverIO, ...), never an instance of this class: it
    is a class only so that LightningCLI / jsonargparse take it as a net's `class_path` with linked arguments
    (jsonargparse 4.4x cannot link into a function's arguments).

    Args:
        path: a perceiver-lit-convert file, an HF model folder, or a perceiver-lit Lightning checkpoint.
        num_classes: output classes; when it differs from the file's, the output layer is freshly initialised
            (one line names the tensors). None: the file's.
        input_shape: per-sample input shape (the data module's); when it differs, positions follow the new grid
            (see the module docstring). None: the file's.
        hf_class: HF folders only: load it as this HF class instead of its config's `architectures`, as HF's
            `from_pretrained` does, e.g. language-perceiver (a PerceiverForMaskedLM) as
            PerceiverForSequenceClassification: the parts the folder lacks (the classification decoder) are freshly
            initialised by HF, and one line names them.
    """

    def __new__(
        cls,
        path: str,
        num_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
        hf_class: str | None = None,
    ):
        path = os.fspath(path)
        tree, state = read_pretrained(path, hf_class)
        return build_pretrained(tree, state, path, num_classes, input_shape)

    # What reads a class's arguments from __init__ (inspect, the CLI's links) sees __new__'s; it never runs, as
    # __new__ returns the net, not an instance of this class.
    __init__ = __new__


# ---------------------------------------------------------------------------------------------------- reading
def read_pretrained(path: str, hf_class: str | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(architecture as a {"class_path", "init_args"} tree, the net's state dict) from any of the three kinds."""
    if os.path.isdir(path):
        return _read_hf_folder(path, hf_class)
    if hf_class is not None:
        raise ValueError(f"pretrained: hf_class={hf_class!r} applies to HF model folders only, and {path} is not one")
    if not os.path.isfile(path):
        hint = (
            " (nothing is downloaded: fetch the HF folder first, e.g. `huggingface-cli download "
            f"{path} --local-dir DIR`, and pass DIR)"
            if path.count("/") == 1 and not path.startswith(".")
            else ""
        )
        raise FileNotFoundError(f"pretrained: {path} does not exist; expected {KINDS}{hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, not a torch file, or objects weights_only refuses
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"pretrained: {path} cannot be read as a torch checkpoint (truncated or corrupt?): "
            f"{type(e).__name__}: {first}; expected {KINDS}"
        ) from e
    if isinstance(ckpt, dict) and ckpt.get("format") == CONVERTED_FORMAT:
        if not isinstance(ckpt.get("spec"), dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise ValueError(f"pretrained: {path} is a converted file without its 'spec' and 'state_dict'")
        return tree_from_spec(ckpt["spec"]), ckpt["state_dict"]
    if (
        isinstance(ckpt, dict)
        and isinstance(ckpt.get("state_dict"), dict)
        and ("pytorch-lightning_version" in ckpt or "hyper_parameters" in ckpt)
    ):
        return _read_lightning(path, ckpt)
    keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise ValueError(f"pretrained: {path} is none of the known kinds (it holds {keys}); expected {KINDS}")


def tree_from_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """perceiver-lit-convert's {"model", "config", "adapter", "queries"} -> a {"class_path", "init_args"} tree."""
    init = dict(spec["config"])
    init["adapter"] = {
        "class_path": f"perceiver_lit.models.{spec['adapter']['class']}",
        "init_args": dict(spec["adapter"]["kwargs"]),
    }
    if spec.get("queries"):
        init["queries"] = {
            "class_path": f"perceiver_lit.models.{spec['queries']['class']}",
            "init_args": dict(spec["queries"]["kwargs"]),
        }
    return {"class_path": f"perceiver_lit.models.{spec['model']}", "init_args": init}


def _read_lightning(path: str, ckpt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    state = {}
    for k, v in ckpt["state_dict"].items():
        if k.startswith("net."):
            state[k[4:].replace("_orig_mod.", "", 1) if k.startswith("net._orig_mod.") else k[4:]] = v
    if not state:
        raise ValueError(
            f"pretrained: {path} is a Lightning checkpoint without net.* weights; expected the "
            "checkpoint of a perceiver-lit task (its net under `net`)"
        )
    tree = ckpt.get("net_spec")
    if tree is None:
        tree = (ckpt.get("hyper_parameters") or {}).get("net")
        if not (isinstance(tree, dict) and "class_path" in tree):
            raise ValueError(
                f"pretrained: {path} does not record its net's architecture (hyper_parameters.net "
                "with a class_path, as `perceiver-lit fit` saves); expected a checkpoint written by the "
                "perceiver-lit CLI"
            )
        if tree["class_path"] in SELF:  # a net itself made by this factory: rebuild what that file records
            inner = (tree.get("init_args") or {}).get("path")
            if not inner or not os.path.exists(inner):
                raise ValueError(
                    f"pretrained: {path} records a net built from {inner!r} by "
                    "perceiver_lit.models.pretrained, which is needed for the architecture and is gone"
                )
            inner_tree, _ = read_pretrained(inner)
            init = tree.get("init_args") or {}
            tree = retarget(inner_tree, init.get("num_classes"), init.get("input_shape"))
    return copy.deepcopy(tree), state


def _read_hf_folder(path: str, hf_class: str | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    from perceiver_lit.convert import SUPPORTED  # the HF mapping lives with the converter

    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(f"pretrained: {path} is a folder without config.json; expected {KINDS}")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"pretrained: {cfg_path} is not valid JSON ({e}); expected an HF config.json") from e
    archs = config.get("architectures") or []
    if not archs or archs[0] not in SUPPORTED:
        raise ValueError(
            f"pretrained: {cfg_path}: architectures={archs} is not supported; supported: {', '.join(SUPPORTED)}"
        )
    if hf_class is not None and hf_class not in SUPPORTED:
        raise ValueError(f"pretrained: hf_class={hf_class!r} is not supported; supported: {', '.join(SUPPORTED)}")
    arch = hf_class or archs[0]
    weights = [w for w in HF_WEIGHTS if os.path.isfile(os.path.join(path, w))]
    if not weights:
        raise ValueError(f"pretrained: {path} has config.json but no weights; expected one of {', '.join(HF_WEIGHTS)}")
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            f"pretrained: {path} is an HF folder, and converting it needs transformers: "
            "pip install 'perceiver-lit[hf]' (or convert it with perceiver-lit-convert where "
            "transformers is installed, and pass the .pt file)"
        ) from e
    from perceiver_lit.convert import from_huggingface

    where = os.path.join(path, weights[0])
    hf_logging = transformers.utils.logging
    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar and load report per rank: noise in a run's log;
    hf_logging.set_verbosity_error()  # what matters is checked below and said in one line
    try:
        hf_model, info = getattr(transformers, arch).from_pretrained(
            path, local_files_only=True, output_loading_info=True
        )
    except Exception as e:  # noqa: BLE001 - corrupt weights, shapes that contradict config.json
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"pretrained: {where} could not be loaded as {arch} ({type(e).__name__}: {first}); "
            f"expected weights that fit {cfg_path}"
        ) from e
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys", []))
    bad = [str(m[0] if isinstance(m, tuple) else m) for m in info.get("mismatched_keys", [])]
    if hf_class is None or hf_class == archs[0]:
        bad += missing
    if bad:
        raise ValueError(f"pretrained: {where}: tensors missing or not fitting {cfg_path}: {sorted(bad)[:5]}")
    if missing and _is_rank_zero():
        print(
            f"[perceiver-lit] pretrained {path}: loaded as {arch} (the folder holds {archs[0]}): newly initialised "
            f"{len(missing)} tensors under {', '.join(sorted({'.'.join(k.split('.')[:3]) for k in missing}))}",
            flush=True,
        )
    model, spec = from_huggingface(hf_model.eval(), return_spec=True)
    return tree_from_spec(spec), model.state_dict()


# --------------------------------------------------------------------------------------------------- building
def _import_target(class_path: str) -> Any:
    """The class (or preset function) a recorded class_path names: an nn.Module subclass, or a function of
    perceiver_lit.models. Nothing else is called on the word of a file."""
    module, _, name = class_path.rpartition(".")
    try:
        target = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"pretrained: the recorded class_path {class_path!r} cannot be imported ({e})") from e
    if inspect.isclass(target) and issubclass(target, nn.Module):
        return target
    if inspect.isfunction(target) and target.__module__.startswith("perceiver_lit.models"):
        return target
    raise ValueError(f"pretrained: the recorded class_path {class_path!r} is not an nn.Module class")


def build_net(tree: Any) -> Any:
    """Instantiate a {"class_path", "init_args"} tree (nested class specs first)."""
    if isinstance(tree, dict) and "class_path" in tree:
        if tree["class_path"] in SELF:
            raise ValueError("pretrained: a recorded architecture cannot itself be perceiver_lit.models.pretrained")
        target = _import_target(tree["class_path"])
        # arguments whose class specs the class builds itself (MultimodalAdapter's `adapters`, each with its
        # modality's input_shape) go in as written, as jsonargparse leaves them
        own = getattr(target, "builds_own_specs", ())
        kwargs = {k: v if k in own else build_net(v) for k, v in (tree.get("init_args") or {}).items()}
        return target(**kwargs)
    if isinstance(tree, dict):
        return {k: build_net(v) for k, v in tree.items()}
    return tree


def retarget(tree: dict[str, Any], num_classes: int | None, input_shape: Any) -> dict[str, Any]:
    """The tree with the data's num_classes and input_shape where the net (or its adapter) takes them."""
    tree = copy.deepcopy(tree)
    init = tree.setdefault("init_args", {})
    if num_classes is not None:
        init["num_classes"] = int(num_classes)
    if input_shape is not None:
        shape = {k: tuple(v) for k, v in input_shape.items()} if isinstance(input_shape, dict) else tuple(input_shape)
        adapter = init.get("adapter")
        if isinstance(adapter, dict) and "class_path" in adapter:
            adapter.setdefault("init_args", {})["input_shape"] = shape
        else:
            init["input_shape"] = shape
    return tree


def _shape_of(tree: dict[str, Any]) -> Any:
    adapter = tree.get("init_args", {}).get("adapter")
    if isinstance(adapter, dict):
        return adapter.get("init_args", {}).get("input_shape")
    return tree.get("init_args", {}).get("input_shape")


def _misfits(expected: dict[str, Tensor], given: dict[str, Tensor]) -> list[str]:
    out = [f"{k} missing" for k in expected if k not in given]
    out += [f"{k} unexpected" for k in given if k not in expected]
    out += [
        f"{k} {tuple(given[k].shape)}, expected {tuple(t.shape)}"
        for k, t in expected.items()
        if k in given and given[k].shape != t.shape
    ]
    return out


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def _resample_grid(table: Tensor, old_grid: Sequence[int], new_grid: Sequence[int]) -> Tensor:
    """(prod(old_grid), C) -> (prod(new_grid), C), interpolated on the grid: bicubic in 2-D, as HF's
    interpolate_pos_encoding (align_corners=False, no antialias); linear in 1-D, trilinear in 3-D."""
    mode = {1: "linear", 2: "bicubic", 3: "trilinear"}[len(old_grid)]
    c = table.shape[-1]
    x = table.float().reshape(1, *old_grid, c).movedim(-1, 1)  # (1, C, *old_grid)
    x = F.interpolate(x, size=tuple(new_grid), mode=mode, align_corners=False)
    return x.movedim(1, -1).reshape(-1, c).to(table.dtype)  # (prod(new_grid), C)


def _adapt_in_channels(weight: Tensor, channels: int) -> Tensor:
    """timm's adapt_input_conv: RGB -> gray sums the input channels (exact for a gray image repeated over RGB);
    otherwise the channels are repeated and rescaled so that the activations keep their scale."""
    old = weight.shape[1]
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(channels / old)
    return weight.repeat(1, reps, *[1] * (weight.ndim - 2))[:, :channels] * (old / channels)


def build_pretrained(
    tree: dict[str, Any], state: dict[str, Tensor], path: str, num_classes: int | None = None, input_shape: Any = None
) -> nn.Module:
    """Rebuild `tree` with `state`, retargeted to num_classes / input_shape (see `pretrained`)."""
    with torch.device("meta"):  # the recorded architecture, for shapes only: no memory, no init
        try:
            old = build_net(tree)
        except (TypeError, ValueError) as e:
            raise ValueError(f"pretrained: {path}: the recorded architecture cannot be built: {e}") from e
    misfit = _misfits(old.state_dict(), state)
    if misfit:
        raise ValueError(
            f"pretrained: {path}: tensors that do not fit the recorded architecture "
            f"({tree['class_path']}): {misfit[:5]}{' ...' if len(misfit) > 5 else ''}"
        )
    new_tree = retarget(tree, num_classes, input_shape)
    try:
        net = build_net(new_tree)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"pretrained: {path} cannot take num_classes={num_classes}, input_shape={input_shape}: {e}"
        ) from e
    target = net.state_dict()
    old_shape, new_shape = _shape_of(tree), _shape_of(new_tree)
    old_classes = getattr(getattr(old, "config", None), "num_classes", getattr(old, "num_classes", None))
    new_classes = num_classes if num_classes is not None else old_classes
    old_modules, new_modules = dict(old.named_modules()), dict(net.named_modules())
    loaded, fresh, adapted, misfit = {}, [], [], []
    for name, t in target.items():
        given = state[name]
        if given.shape == t.shape:
            loaded[name] = given
            continue
        owner, _, leaf = name.rpartition(".")
        mod, old_mod = new_modules.get(owner), old_modules.get(owner)
        parent = new_modules.get(owner.rpartition(".")[0]) if owner else None
        old_parent = old_modules.get(owner.rpartition(".")[0]) if owner else None
        if isinstance(mod, LearnedPositionEncoding) and hasattr(parent, "grid") and parent.grid != old_parent.grid:
            if given.shape[0] != math.prod(old_parent.grid):
                misfit.append(f"{name} {tuple(given.shape)} is not a table over the grid {old_parent.grid}")
            else:
                loaded[name] = _resample_grid(given, old_parent.grid, parent.grid)
        elif (
            isinstance(mod, LearnedPositionEncoding) and given.shape[1:] == t.shape[1:] and given.shape[0] > t.shape[0]
        ):
            loaded[name] = given[: t.shape[0]].clone()  # a shorter text: its first positions
        elif (
            isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
            and leaf == "weight"
            and mod.in_channels != old_mod.in_channels
            and given.shape[0] == t.shape[0]
        ):
            loaded[name] = _adapt_in_channels(given, t.shape[1])
            adapted.append(f"{name} ({given.shape[1]} -> {t.shape[1]} input channels)")
        elif (
            new_classes != old_classes
            and old_classes in given.shape
            and [s for s in given.shape if s != old_classes] == [s for s in t.shape if s != new_classes]
        ):
            fresh.append(name)
        else:
            misfit.append(f"{name} {tuple(given.shape)}, the new shape needs {tuple(t.shape)}")
    if misfit:
        channels = ""
        if isinstance(old_shape, tuple) and isinstance(new_shape, tuple) and old_shape[-1:] != new_shape[-1:]:
            channels = (
                f"; the data has {new_shape[-1]} channels (data.input_shape {new_shape}), {path} was trained "
                f"on {old_shape[-1]}, and its first layer reads the pixels directly (no convolution to "
                f"adapt): give the data {old_shape[-1]} channels"
            )
        raise ValueError(
            f"pretrained: {path} does not fit num_classes={num_classes}, input_shape={input_shape}: "
            f"{misfit[:5]}{channels}"
        )
    for name in fresh:
        loaded[name] = target[name]
    net.load_state_dict(loaded, strict=True)
    if fresh and _is_rank_zero():
        print(
            f"[perceiver-lit] pretrained {path}: num_classes {old_classes} -> {new_classes}: newly initialised "
            f"{', '.join(fresh)}",
            flush=True,
        )
    if adapted and _is_rank_zero():
        print(
            f"[perceiver-lit] pretrained {path}: input channels adapted (timm's adapt_input_conv): "
            f"{', '.join(adapted)}",
            flush=True,
        )
    net.pretrained_spec = new_tree  # the architecture, for checkpoints (Task.on_save_checkpoint) and exporters
    return net
