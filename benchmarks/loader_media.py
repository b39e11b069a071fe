"""Media loader throughput: audio and video DataModules vs bare decode+crop of the same samples, same run.

    python benchmarks/loader_media.py                 # writes benchmarks/results/loader_media.{json,md}
    python benchmarks/loader_media.py --modality video --samples 32 --workers 0

Uses benchmarks/loader.py's runner (overhead = 1 - DataModule rate / bare rate, both in one process with
workers=0, in process CPU time); this file registers the media benches and picks batch sizes per modality:
  audio-raw   AudioSet-like 10 s 48 kHz mono flac -> 61,440-sample crops (the paper's 1.28 s)
  audio-mel   the same clips -> log-mel (129 frames x 128 bins)
  video       Kinetics-like 320x240 H.264 at 25 fps, 3.2 s -> 16 frames at stride 2, short side 256, crop 224

Where the DataModule's time over bare decoding went (profiled 2026-11-22, py-spy + page-fault counts):
  - fresh batch memory: torch's allocator handed every batch new pages (glibc returns blocks of batch size to
    the kernel), each 4 KB page a fault on first write: ~130 us of a ~1 ms raw sample, 2,350 faults a video
    clip. Batches in the main process now come from base.BufferPool (numpy memory, reused once no tensor refers
    to it); in workers they are made in shared memory directly instead of allocated and copied there.
  - per-clip log-mel: the DataModule decodes mel clips into waveform rows and takes the log-mel 4 clips per
    stft in collate (same values; ~100 us a clip less). The bare path keeps computing one clip at a time.
  - what is left (raw audio, ~0.1 ms a sample): page faults and Python callbacks reading the memory-mapped flac
    member, writing the batch rows (the bare clip is discarded while still in cache), tar headers, labels.
Local shards are memory-mapped and flac members handed on as views, so only the pages of the 1.28 s crop are
read; raw clips are decoded straight into rows of the batch buffer and video clips normalised straight into theirs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loader  # noqa: E402  (benchmarks/loader.py)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from loader import BENCHES, Bench  # noqa: E402

# ------------------------------------------------------------------------------------------------------ audio
AUDIO = dict(sample_rate=48000, clip_samples=61440)
MEL = dict(n_fft=2048, win_length=1200, hop_length=480, n_mels=128)


def _audio_shards(root: str, n: int) -> tuple[str, int]:
    """n 10 s 48 kHz flac clips: a few drifting tones over noise (flac compresses it like real recordings)."""
    import soundfile as sf

    from datamodules.shards.writer import write_shards

    rng = np.random.default_rng(0)
    t = np.arange(10 * 48000) / 48000
    items = []
    for _ in range(n):
        freqs = rng.uniform(100, 4000, 3)
        wave = sum(0.2 * np.sin(2 * np.pi * f * t * (1 + 0.01 * np.sin(t))) for f in freqs)
        wave = (wave + rng.normal(0, 0.02, t.shape)).astype(np.float32)
        buf = io.BytesIO()
        sf.write(buf, wave, 48000, format="FLAC")
        items.append((buf.getvalue(), sorted(rng.choice(527, 2, replace=False).tolist())))
    summary = write_shards(items, _encode_flac, root, "bench", maxcount=32, progress=False)
    return summary.pattern, summary.samples


def _encode_flac(item: tuple[bytes, list[int]]) -> dict[str, bytes]:
    return {"flac": item[0], "json": str(item[1]).encode()}


def _audio_dm(features: str):
    def make(urls: str, train: bool, workers: int, batch_size: int):
        from datamodules.audio import AudioDataModule

        kw = {"train_urls": urls} if train else {"val_urls": urls}
        return AudioDataModule(
            features=features,
            **AUDIO,
            **MEL,
            batch_size=batch_size,
            num_workers=workers,
            shuffle_buffer=8,
            mix_batches=4 if train else 1,
            **kw,
        )

    return make


def _audio_bare(features: str):
    from datamodules.transforms import audio as A

    mel = A.LogMel(48000, **MEL) if features == "mel" else None

    def bare(raw: dict[str, bytes], train: bool) -> torch.Tensor:
        wave, _ = A.decode_audio_window(raw["flac"], lambda sr: AUDIO["clip_samples"], train, loader._BARE_RNG)
        x = A.crop_or_pad(torch.from_numpy(wave), AUDIO["clip_samples"], train, start=0)
        return x if mel is None else mel(x)

    return bare


# ------------------------------------------------------------------------------------------------------ video
VIDEO = dict(num_frames=16, frame_stride=2, crop_size=224, short_side=256)


def _video_shards(root: str, n: int) -> tuple[str, int]:
    """n 320x240 H.264 clips (80 frames at 25 fps) of moving smooth patterns plus noise."""
    from datamodules.shards.synthetic_media import write_mp4
    from datamodules.shards.writer import write_shards

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320]
    items = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            phase = rng.uniform(0, 10, 3)
            frames = np.stack(
                [
                    np.stack(
                        [
                            np.sin((xx + 3 * k) / (17 + i % 5) + phase[0]),
                            np.cos((yy - 2 * k) / 13 + phase[1]),
                            np.sin((xx + yy + k) / 29 + phase[2]),
                        ],
                        -1,
                    )
                    for k in range(80)
                ]
            )
            frames = ((frames + 1) * 110 + rng.normal(0, 8, frames.shape)).clip(0, 255).astype(np.uint8)
            path = os.path.join(tmp, f"{i}.mp4")
            write_mp4(path, frames, fps=25)
            items.append((open(path, "rb").read(), i % 400))
    summary = write_shards(items, _encode_mp4, root, "bench", maxcount=16, progress=False)
    return summary.pattern, summary.samples


def _encode_mp4(item: tuple[bytes, int]) -> dict[str, bytes]:
    return {"mp4": item[0], "cls": str(item[1]).encode()}


def _video_dm(urls: str, train: bool, workers: int, batch_size: int):
    from datamodules.video import VideoDataModule

    kw = {"train_urls": urls} if train else {"val_urls": urls}
    return VideoDataModule(
        **VIDEO, batch_size=batch_size, num_workers=workers, shuffle_buffer=4, mix_batches=4 if train else 1, **kw
    )


def _video_bare(raw: dict[str, bytes], train: bool) -> torch.Tensor:
    from datamodules.transforms import video as V

    rng = loader._BARE_RNG
    clip = V.decode_clip(raw["mp4"], VIDEO["num_frames"], VIDEO["frame_stride"], train, rng)
    return V.resize_crop_normalize(clip.frames, VIDEO["crop_size"], VIDEO["short_side"], train, rng)  # float32


BENCHES.update(
    {
        "audio-raw": Bench(
            _audio_shards, _audio_dm("raw"), _audio_bare("raw"), "10 s 48 kHz flac -> 61,440 raw samples"
        ),
        "audio-mel": Bench(_audio_shards, _audio_dm("mel"), _audio_bare("mel"), "10 s 48 kHz flac -> log-mel 129x128"),
        "video": Bench(_video_shards, _video_dm, _video_bare, "320x240 H.264 25 fps -> 16 frames stride 2, 224 crop"),
    }
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--modality",
        nargs="+",
        default=["audio-raw", "audio-mel", "video"],
        choices=["audio-raw", "audio-mel", "video"],
    )
    p.add_argument(
        "--samples", type=int, default=192, help="96 varied by +-5 points run to run on a shared 2-core machine"
    )
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--audio-batch-size", type=int, default=32)
    p.add_argument("--video-batch-size", type=int, default=8, help="8 x 16 x 224 x 224 x 3 floats = 77 MB a batch")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    p.add_argument("--out", default=os.path.join(loader.RESULTS, "loader_media"), help="<out>.json and <out>.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result: dict = {}
    for name in args.modality:
        bs = args.video_batch_size if name == "video" else args.audio_batch_size
        part = loader.run([name], args.samples, args.workers, [bs], args.repeats)
        result = {**part, "rows": result.get("rows", []) + part["rows"]}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(loader.markdown(result))
    print(loader.markdown(result))


if __name__ == "__main__":
    main()
