"""AttentionMaps: log the first cross-attention's weights of a few latents over the input to W&B, at validation.

SDPA returns no attention weights, so a forward hook on the model's first `CrossAttentionLayer` recomputes
softmax(q k^T / sqrt(d)) for a few latents of the first validation batch from what went into the layer and the
layer's own norms and projections. It runs inside the layer's call, before FSDP2's post-forward hook reshards the
parameters, so it sees them whole under FSDP2 too (rank 0 only; no collective). One image per sample:

- 2-D element grids (images; mel spectrograms): the input, then one heat map per latent;
- 3-D grids (video patches): the maps averaged over time;
- 1-D (raw-audio patches) or no grid (points, bytes, multimodal): one curve per latent over the elements.

With permuted inputs (the adapter's `permute_seed`) the maps are put back on the true grid, so they stay readable.
A no-op (one info line) when no WandbLogger is attached.
"""

from __future__ import annotations

import io
import math

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from perceiver_lit.callbacks.media_schedule import logs_media_now
from perceiver_lit.models.attention import CrossAttentionLayer
from perceiver_lit.models.position import seeded_permutation


def first_cross_attention(net: nn.Module) -> CrossAttentionLayer | None:
    """The encoder's first cross-attention: the first CrossAttentionLayer in registration order (the models
    register the encoder before any decoder)."""
    return next((m for m in net.modules() if isinstance(m, CrossAttentionLayer)), None)


@torch.no_grad()
def cross_attention_weights(
    layer: CrossAttentionLayer, latents: Tensor, inputs: Tensor, pad_mask: Tensor | None = None
) -> Tensor:
    """softmax(q k^T / sqrt(d)) of `layer` for latents (B, K, D) over inputs (B, M, C): (B, K, M), mean over heads."""
    B, K, _ = latents.shape
    M, h = inputs.shape[1], layer.num_heads
    dtype = layer.to_q.weight.dtype  # fp32, or FSDP2's parameter dtype under its mixed precision
    # All of it outside autocast: under bf16-mixed the scores would come out in bf16 (coarse maps that
    # matplotlib cannot draw).
    with torch.autocast(latents.device.type, enabled=False):
        q = layer.to_q(layer.norm_q(latents.to(dtype))).float()  # (B, K, Cqk)
        k = layer.project_kv(inputs.to(dtype))[..., : layer.qk_channels].float()  # (B, M, Cqk)
        q = q.view(B, K, h, -1).transpose(1, 2)  # (B, h, K, d)
        k = k.view(B, M, h, -1).transpose(1, 2)  # (B, h, M, d)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, h, K, M)
        if pad_mask is not None:
            scores = scores.masked_fill(pad_mask[:, None, None, :], float("-inf"))
        return scores.softmax(-1).mean(1)  # (B, K, M) fp32


def element_permutation(net: nn.Module, num_elements: int) -> Tensor | None:
    """The permutation the adapter applies to its position features (None without permute_seed): element j of
    the permuted input sits at true grid position perm[j]."""
    pos = getattr(getattr(net, "adapter", None), "pos", None)
    perm = getattr(pos, "perm", None)
    if isinstance(perm, Tensor) and perm.numel() == num_elements:
        return perm.cpu()
    seed = getattr(pos, "permute_seed", None)
    if seed is None:
        return None
    return seeded_permutation(num_elements, seed)


def _figure_to_pil(fig):
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def draw_sample(weights: Tensor, grid: tuple[int, ...] | None, image: Tensor | None, latent_ids: list[int], title: str):
    """One PIL image: weights (K, M) of one sample on its grid (2-D/3-D -> heat maps, else curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    K = weights.shape[0]
    if grid is not None and len(grid) in (2, 3):
        maps = weights.reshape(K, *grid)
        if len(grid) == 3:
            maps = maps.mean(1)  # (K, T, H, W) -> mean over time
        panels = ([image] if image is not None else []) + list(maps)
        fig, axes = plt.subplots(1, len(panels), figsize=(1.8 * len(panels), 2.1), dpi=80, squeeze=False)
        for j, (ax, p) in enumerate(zip(axes[0], panels)):
            is_input = image is not None and j == 0
            if is_input:
                p = p.float()
                p = (p - p.min()) / (p.max() - p.min() + 1e-8)
                ax.imshow(
                    p.squeeze(-1).numpy() if p.shape[-1] == 1 else p.numpy(), cmap="gray" if p.shape[-1] == 1 else None
                )
                ax.set_title("input", fontsize=8)
            else:
                ax.imshow(p.numpy(), cmap="viridis")
                ax.set_title(f"latent {latent_ids[j - (image is not None)]}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    else:
        fig, ax = plt.subplots(figsize=(6, 2.4), dpi=80)
        for i in range(K):
            ax.plot(weights[i].numpy(), lw=1, label=f"latent {latent_ids[i]}")
        ax.set_xlabel("input element (time for audio patches)", fontsize=8)
        ax.set_ylabel("attention", fontsize=8)
        ax.legend(fontsize=7, ncol=min(K, 4))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    img = _figure_to_pil(fig)
    plt.close(fig)
    return img


class AttentionMaps(pl.Callback):
    """Log `val/attention_maps`: cross-attention of `num_latents` latents for the first `num_samples` samples of
    the first validation batch, every `every_n_epochs` validation epochs.

    Args:
        num_latents: how many latents to show (evenly spaced over the latent array).
        num_samples: how many samples of the first validation batch.
        every_n_epochs: log on validation epochs divisible by this.
    """

    def __init__(self, num_latents: int = 4, num_samples: int = 2, every_n_epochs: int = 1) -> None:
        self.num_latents, self.num_samples, self.every_n_epochs = num_latents, num_samples, every_n_epochs
        self._logger: WandbLogger | None = None
        self._handle = None
        self._maps: tuple[list[int], Tensor] | None = None  # latent ids, weights (S, K, M) on the CPU

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if self._logger is None:
            rank_zero_info("AttentionMaps: no WandbLogger attached; attention maps are not logged")
        elif first_cross_attention(pl_module) is None:
            rank_zero_info(
                f"AttentionMaps: {type(getattr(pl_module, 'net', pl_module)).__name__} has no "
                "cross-attention; attention maps are not logged"
            )
            self._logger = None

    def attach(self, layer: CrossAttentionLayer) -> None:
        """Compute the maps at the next call of `layer`. The hook is prepended: it runs before FSDP2's
        post-forward hook, while the layer's parameters are still gathered."""
        self._maps = None
        self._handle = layer.register_forward_hook(self._hook, with_kwargs=True, prepend=True)

    def detach(self) -> tuple[list[int], Tensor] | None:
        """Remove the hook; the maps it computed: (latent ids, weights (S, K, M)), or None."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        maps, self._maps = self._maps, None
        return maps

    def _hook(self, module: CrossAttentionLayer, args: tuple, kwargs: dict, output: Tensor) -> None:
        if self._maps is None:  # the first call of the first batch: the first cross-attend
            x = args[0] if len(args) > 0 else kwargs["x"]
            inputs = args[1] if len(args) > 1 else kwargs["inputs"]
            mask = args[2] if len(args) > 2 else kwargs.get("pad_mask")
            n, N = self.num_samples, x.shape[1]
            ids = torch.linspace(0, N - 1, min(self.num_latents, N)).round().long().unique().tolist()
            w = cross_attention_weights(module, x[:n, ids], inputs[:n], None if mask is None else mask[:n])
            self._maps = (ids, w.float().cpu())  # computed under bf16 autocast: numpy/matplotlib need fp32

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self._logger is None or not logs_media_now(trainer, batch_idx, dataloader_idx, self.every_n_epochs):
            return
        self.attach(first_cross_attention(pl_module))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._handle is None:
            return
        maps = self.detach()
        if maps is None:
            return
        ids, w = maps  # (S, K, M)
        M = w.shape[-1]
        net = getattr(pl_module, "net", pl_module)
        grid = getattr(getattr(net, "adapter", None), "grid", None)
        grid = tuple(grid) if grid is not None and math.prod(grid) == M else None
        perm = element_permutation(net, M)
        if perm is not None:  # back to the true grid: element j sits at position perm[j]
            w = torch.empty_like(w).index_copy_(-1, perm, w)
        images, captions = [], []
        raw = batch["inputs"] if isinstance(batch.get("inputs"), Tensor) else None
        for s in range(w.shape[0]):
            image = None
            # Show the input beside the maps when it is an image on the same grid as the elements.
            if (
                raw is not None
                and grid is not None
                and len(grid) == 2
                and raw.ndim == 4
                and tuple(raw.shape[1:3]) == grid
            ):
                image = raw[s].detach().cpu()
                if perm is not None:
                    flat = image.reshape(M, -1)
                    image = torch.empty_like(flat).index_copy_(0, perm, flat).reshape(image.shape)
            title = f"epoch {trainer.current_epoch}, sample {s}" + (
                f", target {int(batch['target'][s])}" if batch["target"].ndim == 1 else ""
            )
            images.append(draw_sample(w[s], grid, image, ids, title))
            captions.append(title)
        self._logger.log_image("val/attention_maps", images, step=trainer.global_step, caption=captions)
