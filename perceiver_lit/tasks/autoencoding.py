"""Perceiver IO multimodal autoencoding (Jaegle et al. 2021, Sec. 4.3): video + audio + class label through the
latent bottleneck of `perceiver_lit.models.PerceiverIOMultimodalAutoencoder`.

What the task does (docs/training.md, "Multimodal autoencoding"):

- inputs: the audio+video batch `{"video": (B, T, H, W, C), "audio": (B, S)}` plus the label, `target` (B,), as the
  third modality. The video is reconstructed in the data module's space (its normalisation); PSNR is taken on
  pixels in [0, 1] after undoing it (`video_mean`, `video_std`, linked by the CLI from the data module). Audio is
  the raw waveform in [-1, 1] (mel features are refused by the model).
- the label input: as the paper, masked for half of the training samples (the model's `mask_probs {"label": 0.5}`)
  and always in eval, so that the label must be recovered from video and audio: `val/acc1` is a classifier's
  accuracy (`eval_mask_label: false` shows it to the model in eval too).
- training decodes a random subset of the outputs per sample (`train_video_queries` pixels and
  `train_audio_queries` audio patches of 16 samples, plus the label), as the paper trains its autoencoder; eval
  and predict decode every output, in chunks (the model's `decode_chunk_size`).
- loss: `w_video * MSE(video) + w_audio * MSE(audio) + w_label * CE(label)` on the decoded outputs.
- metrics (torchmetrics, summed over ranks): `{val,test}/psnr_video`, `/psnr_audio`, `/acc1`, and the PSNR of two
  baselines built from the training clips seen so far in this run: `psnr_{video,audio}_mean_frame` (every frame,
  or each frame's span of audio, predicted as the training set's mean frame) and `psnr_{video,audio}_mean_clip`
  (the training set's mean clip). The sums behind them are in the checkpoint (rank 0's: under DDP each rank sums
  its own share, so the restored mean is rank 0's clips' mean); a validation before any training has none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from perceiver_lit.models.decoders import random_query_indices, take_rows
from perceiver_lit.tasks.base import Task
from perceiver_lit.tasks.reconstruction_metrics import PSNR, RunningMean

# Perceiver IO, Appendix (Kinetics-700 multimodal autoencoding): the loss is a weighted sum of the per-modality
# losses, video 0.03, audio 1.0, label 0.0001 (the reconstruction-first setting of the paper's Table 5). PAPER.md
# does not quote these numbers: they are taken from the paper's appendix as we read it; check them there.
PAPER_LOSS_WEIGHTS = {"video": 0.03, "audio": 1.0, "label": 0.0001}
# Signal ranges for PSNR: video pixels in [0, 1], the waveform in [-1, 1] (full scale).
VIDEO_RANGE, AUDIO_RANGE = (0.0, 1.0), (-1.0, 1.0)
BASELINES = ("mean_frame", "mean_clip")


class MultimodalAutoencoding(Task):
    """Batch `{"inputs": {"video", "audio"}, "target": int64 (B,)}` -> reconstructions of video, audio, label.

    Args:
        net: a PerceiverIOMultimodalAutoencoder (its adapter's input_shape: the data's plus "label": (K,), linked by
            the CLI).
        loss_weights: {"video", "audio", "label"} loss weights; default the paper's 0.03 / 1.0 / 0.0001.
        train_video_queries: pixels decoded per training sample (the paper: 512).
        train_audio_queries: audio patches (of the model's samples_per_patch, 16) decoded per training sample (the
            paper's 512 audio samples: 32 patches).
        eval_mask_label: mask the label input in eval and predict (the paper; the model then classifies the clip).
        video_mean, video_std: the data module's video normalisation, undone for PSNR and media (linked by the CLI
            from `data.video`); None: the video is already in [0, 1].
        media_samples: validation samples whose reconstructions the W&B media callback logs (first batch).
        **kwargs: optimizer and schedule, see `Task`.
    """

    monitor = ("val/loss", "min")
    #: the CLI adds `"label": (num_classes,)` to the adapter's input_shape (the label is an input modality).
    label_input = True

    def __init__(
        self,
        net: nn.Module,
        loss_weights: Mapping[str, float] | None = None,
        train_video_queries: int = 512,
        train_audio_queries: int = 32,
        eval_mask_label: bool = True,
        video_mean: Sequence[float] | None = None,
        video_std: Sequence[float] | None = None,
        media_samples: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(net, **kwargs)
        weights = dict(PAPER_LOSS_WEIGHTS if loss_weights is None else loss_weights)
        if set(weights) != set(PAPER_LOSS_WEIGHTS) or any(w < 0 for w in weights.values()):
            raise ValueError(
                f"model.init_args.loss_weights must give video, audio and label weights >= 0, got {weights}"
            )
        self.loss_weights = {k: float(v) for k, v in weights.items()}
        if train_video_queries < 1 or train_audio_queries < 1:
            raise ValueError(
                "model.init_args.train_video_queries / train_audio_queries must be >= 1, got "
                f"{train_video_queries} / {train_audio_queries}"
            )
        self.train_video_queries, self.train_audio_queries = train_video_queries, train_audio_queries
        self.eval_mask_label, self.media_samples = eval_mask_label, media_samples
        model = self._model()
        self.video_shape = tuple(model.video_shape) + (model.video_channels,)  # (T, H, W, C)
        self.audio_samples = model.num_queries("audio") * model.samples_per_patch  # S
        C = self.video_shape[-1]
        mean = (0.0,) * C if video_mean is None else tuple(float(m) for m in video_mean)
        std = (1.0,) * C if video_std is None else tuple(float(s) for s in video_std)
        if len(mean) != C or len(std) != C:
            raise ValueError(f"model.init_args.video_mean / video_std need {C} channels, got {mean} / {std}")
        self.register_buffer("video_mean", torch.tensor(mean), persistent=False)
        self.register_buffer("video_std", torch.tensor(std), persistent=False)
        self.metrics = nn.ModuleDict({f"{s}_metrics": self._make_metrics(s) for s in ("val", "test")})
        # the training clips seen, for the baselines; in the checkpoint, so `validate` / `test --ckpt_path` have them
        self.train_means = nn.ModuleDict(
            {"video": RunningMean(self.video_shape), "audio": RunningMean((self.audio_samples,))}
        )
        for m in self.train_means.values():
            m.persistent(True)
        self._baselines: dict[str, dict[str, Tensor]] | None = None

    def _model(self) -> nn.Module:
        return getattr(self.net, "_orig_mod", self.net)

    def _make_metrics(self, stage: str) -> nn.ModuleDict:
        psnr = {"psnr_video": PSNR(1.0, VIDEO_RANGE), "psnr_audio": PSNR(2.0, AUDIO_RANGE)}
        for b in BASELINES:
            psnr[f"psnr_video_{b}"] = PSNR(1.0, VIDEO_RANGE)
            psnr[f"psnr_audio_{b}"] = PSNR(2.0, AUDIO_RANGE)
        # a plain ModuleDict, not a MetricCollection: its compute groups would merge look-alike PSNR states
        return nn.ModuleDict(
            {"psnr": nn.ModuleDict(psnr), "acc1": MulticlassAccuracy(self.num_classes, top_k=1, average="micro")}
        )

    # ---- inputs and targets ---------------------------------------------------------------------------------

    def pixels(self, video: Tensor) -> Tensor:
        """Normalised video (..., C) -> pixels in the data's [0, 1] space."""
        return video.float() * self.video_std + self.video_mean

    def _inputs(self, batch: dict) -> dict[str, Tensor]:
        inputs = batch["inputs"]
        if not isinstance(inputs, Mapping) or set(inputs) != {"video", "audio"}:
            got = sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__
            raise ValueError(
                f"MultimodalAutoencoding: batch inputs must be {{'video', 'audio'}} (an audio+video "
                f"data module with features: raw), got {got}"
            )
        # unlabelled samples (target -1, raw predict files) give class 0 to the label input, which eval masks
        return {**inputs, "label": batch["target"].long().clamp(min=0)}

    def reconstruct(self, batch: dict) -> dict[str, Tensor]:
        """Every output decoded (in chunks), the label input masked when eval_mask_label: {"video", "audio",
        "label"} as the model returns them."""
        masked = ("label",) if self.eval_mask_label else ()
        return self.net(self._inputs(batch), masked=masked)

    # ---- steps ----------------------------------------------------------------------------------------------

    def _losses(self, out: dict[str, Tensor], video: Tensor, audio: Tensor, target: Tensor) -> dict[str, Tensor]:
        losses = {
            "video": F.mse_loss(out["video"].float(), video.float()),
            "audio": F.mse_loss(out["audio"].float(), audio.float()),
        }
        labelled = target >= 0
        # no labelled sample: a zero that keeps the graph (no branch on the count: no host-device wait)
        ce = F.cross_entropy(out["label"].float(), target.clamp(min=0), reduction="none")
        losses["label"] = (ce * labelled).sum() / labelled.sum().clamp(min=1)
        return losses

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        model, inputs, target = self._model(), self._inputs(batch), batch["target"]
        video, audio = inputs["video"], inputs["audio"]  # (B, T, H, W, C), (B, S)
        B, device = video.shape[0], video.device
        nv, na = model.num_queries("video"), model.num_queries("audio")
        v_idx = random_query_indices(nv, min(self.train_video_queries, nv), B, device)  # (B, Qv)
        a_idx = random_query_indices(na, min(self.train_audio_queries, na), B, device)  # (B, Qa)
        out = self.net(inputs, query_indices={"video": v_idx, "audio": a_idx})
        v_target = take_rows(video.reshape(B, nv, -1), v_idx)  # (B, Qv, C)
        a_target = take_rows(audio.reshape(B, na, -1), a_idx).reshape(B, -1)  # (B, Qa * 16)
        losses = self._losses(out, v_target, a_target, target)
        loss = sum(self.loss_weights[k] * losses[k] for k in losses)
        self.train_means["video"].update(self.pixels(video))
        self.train_means["audio"].update(audio)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=B)
        for k, v in losses.items():
            self.log(f"train/loss_{k}", v, on_step=True, on_epoch=False, batch_size=B)
        return loss

    def _baseline_predictions(self) -> dict[str, dict[str, Tensor]] | None:
        """{modality: {baseline: prediction of one sample}} from the training clips seen so far; None before any."""
        if int(self.train_means["video"].count) == 0:  # every rank trains the same number of steps
            return None
        clip = {"video": self.train_means["video"].compute(), "audio": self.train_means["audio"].compute()}
        T = self.video_shape[0]
        frame_video = clip["video"].mean(0, keepdim=True).expand_as(clip["video"])  # (T, H, W, C)
        preds = {
            "video": {"mean_clip": clip["video"], "mean_frame": frame_video},
            "audio": {"mean_clip": clip["audio"]},
        }
        if self.audio_samples % T == 0:  # each frame's span of audio, averaged over the clip's frames
            span = clip["audio"].view(T, -1)
            preds["audio"]["mean_frame"] = span.mean(0, keepdim=True).expand_as(span).reshape(-1)
        return preds

    def on_validation_epoch_start(self) -> None:
        self._baselines = self._baseline_predictions()

    def on_test_epoch_start(self) -> None:
        self._baselines = self._baseline_predictions()

    def shared_step(self, batch: dict, stage: str, batch_idx: int) -> dict[str, Tensor] | None:
        target = batch["target"]
        out = self.reconstruct(batch)
        video, audio = batch["inputs"]["video"], batch["inputs"]["audio"]
        losses = self._losses(out, video, audio, target)
        loss = sum(self.loss_weights[k] * losses[k] for k in losses)
        B = target.shape[0]
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=B, sync_dist=True)
        for k, v in losses.items():
            self.log(f"{stage}/loss_{k}", v, on_epoch=True, batch_size=B, sync_dist=True)
        metrics = self.metrics[f"{stage}_metrics"]
        psnr = metrics["psnr"]
        v_pix, v_rec = self.pixels(video), self.pixels(out["video"])
        psnr["psnr_video"].update(v_rec, v_pix)
        psnr["psnr_audio"].update(out["audio"], audio)
        names = ["psnr_video", "psnr_audio"]
        if self._baselines is not None:
            for m, target_m in (("video", v_pix), ("audio", audio)):
                for b, pred in self._baselines[m].items():
                    psnr[f"psnr_{m}_{b}"].update(pred.to(target_m.device).expand_as(target_m), target_m)
                    names.append(f"psnr_{m}_{b}")
        for name in names:
            self.log(
                f"{stage}/{name}",
                psnr[name],
                on_epoch=True,
                prog_bar=name in ("psnr_video", "psnr_audio"),
                batch_size=B,
            )
        labelled = target >= 0
        metrics["acc1"].update(out["label"].detach()[labelled], target[labelled])
        self.log(f"{stage}/acc1", metrics["acc1"], on_epoch=True, prog_bar=True, batch_size=B)
        if stage == "val" and batch_idx == 0 and self.media_samples > 0:  # for the W&B media callback
            n = self.media_samples
            return {
                "video": v_rec[:n].detach().clamp(*VIDEO_RANGE),
                "original_video": v_pix[:n],
                "audio": out["audio"][:n].detach().clamp(*AUDIO_RANGE),
                "original_audio": audio[:n],
                "label": out["label"][:n].detach().argmax(-1),
                "target": target[:n],
            }
        return None

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor] | None:
        return self.shared_step(batch, "val", batch_idx)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        out = self.reconstruct(batch)
        return {
            "key": batch.get("key"),
            "logits": out["label"],
            "video": self.pixels(out["video"]).clamp(*VIDEO_RANGE),
            "audio": out["audio"].clamp(*AUDIO_RANGE),
        }
