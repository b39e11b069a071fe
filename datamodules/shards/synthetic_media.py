"""Seeded synthetic media as real files, for tests and demos: spoken digits (espeak-ng, flite or DTMF tones),
bouncing-digit H.264 mp4s (with AAC audio for audio+video), ModelNet40-style meshes, and fortunes for language ID.
Same seed -> same files. `perceiver-lit-shards synthetic` (synthetic.py) writes them and packs them into shards.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from datamodules.keywords import declared_defaults

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SHAPES = ("cube", "sphere", "cylinder", "cone", "torus")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
# language -> fortune files (relative to FORTUNES_DIR). English and Italian/Portuguese share the top level.
LANGUAGES: dict[str, tuple[str, ...]] = {
    "en": (
        "fortunes",
        "wisdom",
        "science",
        "literature",
        "people",
        "computers",
        "humorists",
        "work",
        "politics",
        "love",
        "food",
        "education",
        "platitudes",
        "riddles",
        "miscellaneous",
        "law",
        "medicine",
        "pets",
    ),
    "de": ("de",),
    "es": ("es",),
    "it": ("it", "italia", "definizioni", "formiche", "leggi", "luttazzi", "paolotedeschi"),
    "pt": ("pt", "brasil"),
    "pl": ("pl",),
    "ru": ("ru",),
    "fr": ("fr",),
}
# DTMF row/column frequencies (Hz): the tone fallback when no speech engine is installed.
DTMF = {
    1: (697, 1209),
    2: (697, 1336),
    3: (697, 1477),
    4: (770, 1209),
    5: (770, 1336),
    6: (770, 1477),
    7: (852, 1209),
    8: (852, 1336),
    9: (852, 1477),
    0: (941, 1336),
}


# ------------------------------------------------------------------------------------------------------- speech
def speech_engine(preferred: str = "auto") -> str:
    """`espeak-ng` if installed, else `flite`, else `tones` (DTMF: always available)."""
    order = {
        "auto": ("espeak-ng", "flite", "tones"),
        "espeak-ng": ("espeak-ng",),
        "flite": ("flite",),
        "tones": ("tones",),
    }
    if preferred not in order:
        raise ValueError(f"speech engine must be one of {list(order)}, got {preferred!r}")
    for engine in order[preferred]:
        if engine == "tones" or shutil.which(engine):
            return engine
    raise FileNotFoundError(f"speech engine {preferred!r} asked for but not on PATH (apt-get install {preferred})")


def speak_digits(digits: list[int], sample_rate: int, rng: np.random.Generator, engine: str = "auto") -> np.ndarray:
    """Speak `digits` (words "seven", ...) -> mono `float32 (S,)` at `sample_rate`, voice/speed/pitch from `rng`."""
    import soundfile as sf
    import torch

    from datamodules.transforms.audio import resample

    engine = speech_engine(engine)
    text = " ".join(DIGIT_WORDS[d] for d in digits)
    if engine == "tones":
        return _dtmf(digits, sample_rate, rng)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "speech.wav")
        if engine == "espeak-ng":
            voice = str(rng.choice(["en", "en-us", "en-gb-scotland", "en-029", "en-gb-x-rp"]))
            cmd = [
                "espeak-ng",
                "-v",
                voice,
                "-s",
                str(int(rng.integers(140, 200))),
                "-p",
                str(int(rng.integers(30, 70))),
                "-w",
                path,
                text,
            ]
        else:
            cmd = ["flite", "-voice", str(rng.choice(["kal", "slt", "rms", "awb"])), "-t", text, "-o", path]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        wave, sr = sf.read(path, dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if sr != sample_rate:
        wave = resample(torch.from_numpy(wave), sr, sample_rate).numpy()
    return wave / max(float(np.abs(wave).max()), 1e-6) * 0.8


def _dtmf(digits: list[int], sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    tone, gap = int(0.25 * sample_rate), int(0.08 * sample_rate)
    t = np.arange(tone) / sample_rate
    parts = []
    for d in digits:
        lo, hi = DTMF[d]
        parts += [0.4 * (np.sin(2 * np.pi * lo * t) + np.sin(2 * np.pi * hi * t)), np.zeros(gap)]
    return np.concatenate(parts).astype(np.float32)


def place(wave: np.ndarray, length: int, rng: np.random.Generator, noise: float = 0.003) -> tuple[np.ndarray, int]:
    """Put `wave` at a random offset in `length` samples of faint noise (cropping if it is longer)."""
    out = (rng.standard_normal(length) * noise).astype(np.float32)
    wave = wave[:length]
    offset = int(rng.integers(0, length - len(wave) + 1))
    out[offset : offset + len(wave)] += wave * float(rng.uniform(0.5, 1.0))
    return out, offset


# -------------------------------------------------------------------------------------------------------- video
def digit_frames(
    digit: int, num_frames: int, size: int, rng: np.random.Generator, brightness: np.ndarray | None = None
) -> np.ndarray:
    """A digit bouncing around a `size x size` frame: `uint8 (T, size, size, 3)`. `brightness (T,)` in [0, 1]
    scales the digit's colour per frame (the audio+video generator lights it while it is spoken)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(8, size // 2))
    glyph = str(digit)
    left, top, right, bottom = font.getbbox(glyph)
    gw, gh = right - left, bottom - top
    pos = rng.uniform([0, 0], [size - gw, size - gh])
    vel = rng.uniform(-1, 1, 2) * size / 16
    color = rng.integers(128, 256, 3)
    background = rng.integers(0, 64, 3)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        image = Image.new("RGB", (size, size), tuple(int(c) for c in background))
        scale = 1.0 if brightness is None else float(brightness[t])
        fill = tuple(int(b + (c - b) * scale) for c, b in zip(color, background))
        ImageDraw.Draw(image).text((pos[0] - left, pos[1] - top), glyph, font=font, fill=fill)
        frames[t] = np.asarray(image)
        pos += vel
        for axis, limit in ((0, size - gw), (1, size - gh)):  # bounce off the borders
            if not 0 <= pos[axis] <= limit:
                vel[axis] = -vel[axis]
                pos[axis] = min(max(pos[axis], 0), limit)
    return frames


def write_mp4(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: int,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 23,
) -> None:
    """Encode `uint8 (T, H, W, 3)` frames as H.264 (yuv420p) and optionally mono `float32 (S,)` audio as AAC."""
    import av

    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"write_mp4: yuv420p needs even frame sides, got {h}x{w}")
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.options = {"crf": str(crf), "preset": "veryfast"}
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate, layout="mono")
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if astream is not None:
            chunk = 1024  # aac's frame size
            samples = np.ascontiguousarray(audio, dtype=np.float32)
            for i in range(0, len(samples), chunk):
                piece = samples[i : i + chunk]
                frame = av.AudioFrame.from_ndarray(piece[None], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = sample_rate, i
                for packet in astream.encode(frame):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)


# ---------------------------------------------------------------------------------------------- the generators
def make_video(root: Path, n: int, seed: int, frames: int = 16, size: int = 32, fps: int = 10, **_) -> Path:
    """`root/<digit>/<key>.mp4`, class-per-folder. Returns root."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        digit = int(rng.integers(10))
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
        write_mp4(root / str(digit) / f"video{i:06d}.mp4", digit_frames(digit, frames, size, rng), fps)
    return root


def make_audio(
    root: Path,
    n: int,
    seed: int,
    sample_rate: int = 16000,
    seconds: float = 1.5,
    fmt: str = "flac",
    multilabel: bool = False,
    engine: str = "auto",
    **_,
) -> Path:
    """`root/<key>.<fmt>` plus `root/labels.csv` (`path,labels`; labels "3" or "3,7"). Returns the CSV path."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        k = int(rng.integers(1, 4)) if multilabel else 1
        digits = sorted(int(d) for d in rng.choice(10, size=k, replace=False))
        wave, _ = place(speak_digits(digits, sample_rate, rng, engine), int(seconds * sample_rate), rng)
        name = f"audio{i:06d}.{fmt}"
        sf.write(root / name, wave, sample_rate, format=fmt.upper())
        rows.append((name, ",".join(map(str, digits))))
    csv_path = root / "labels.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        writer.writerows(rows)
    return csv_path


# the audio+video clips take their video defaults from make_video and their audio defaults from make_audio
_VIDEO, _AUDIO = declared_defaults(make_video), declared_defaults(make_audio)


def make_audiovisual(
    root: Path,
    n: int,
    seed: int,
    frames: int = _VIDEO["frames"],
    size: int = _VIDEO["size"],
    fps: int = _VIDEO["fps"],
    sample_rate: int = _AUDIO["sample_rate"],
    engine: str = _AUDIO["engine"],
    separate: bool = False,
    **_,
) -> Path:
    """`root/<digit>/<key>.mp4` with H.264 video and AAC audio: the digit is spoken once, and drawn at full
    brightness exactly while it sounds (dim otherwise), so the streams are time-aligned. `separate`: the mp4
    holds only the video and the audio goes to `<key>.flac` beside it. Returns root."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    for i in range(n):
        digit = int(rng.integers(10))
        length = int(frames / fps * sample_rate)
        speech = speak_digits([digit], sample_rate, rng, engine)
        audio, offset = place(speech, length, rng)
        frame_times = np.arange(frames) / fps
        speaking = (frame_times >= offset / sample_rate) & (frame_times < (offset + len(speech)) / sample_rate)
        video = digit_frames(digit, frames, size, rng, brightness=np.where(speaking, 1.0, 0.35))
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
        path = root / str(digit) / f"av{i:06d}.mp4"
        if separate:
            write_mp4(path, video, fps)
            sf.write(path.with_suffix(".flac"), audio, sample_rate, format="FLAC")
        else:
            write_mp4(path, video, fps, audio, sample_rate)
    return root


def make_pointcloud(
    root: Path, n: int, seed: int, fmt: str = "off", num_points: int = 2048, split: str = "train", **_
) -> Path:
    """ModelNet40's layout: `root/<shape>/<split>/<key>.off` meshes (or `.npy` float32 (num_points, 3) surface
    samples), random size, proportions and rotation. Returns root."""
    import trimesh

    rng = np.random.default_rng(seed)
    for i in range(n):
        label = int(rng.integers(len(SHAPES)))
        mesh = _shape(SHAPES[label], rng)
        mesh.apply_transform(trimesh.transformations.random_rotation_matrix(rng.random(3)))
        folder = root / SHAPES[label] / split
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{SHAPES[label]}_{i:06d}.{fmt}"
        if fmt == "off":
            mesh.export(path, file_type="off")
        elif fmt == "npy":
            points, _ = trimesh.sample.sample_surface(mesh, num_points, seed=int(rng.integers(2**31)))
            np.save(path, points.astype(np.float32))
        else:
            raise ValueError(f"point-cloud format must be 'off' or 'npy', got {fmt!r}")
    return root


def _shape(name: str, rng: np.random.Generator):
    import trimesh.creation as tc

    s = rng.uniform(0.5, 2.0, 3)
    if name == "cube":
        return tc.box(extents=s)
    if name == "sphere":
        mesh = tc.icosphere(subdivisions=2, radius=1.0)
        mesh.apply_scale([1.0, s[1] / s[0] * 0.3 + 0.7, s[2] / s[0] * 0.3 + 0.7])  # mildly ellipsoidal
        return mesh
    if name == "cylinder":
        return tc.cylinder(radius=s[0] / 2, height=s[1], sections=24)
    if name == "cone":
        return tc.cone(radius=s[0] / 2, height=s[1], sections=24)
    return tc.torus(
        major_radius=s[0] / 2 + 0.3, minor_radius=min(s[1], s[0]) / 6 + 0.05, major_sections=24, minor_sections=12
    )


def read_fortunes(language: str, fortunes_dir: Path = FORTUNES_DIR, max_chars: int = 2000) -> list[str]:
    """All fortunes of one language: files split on lines holding a single `%`; `.dat`/`.u8` twins skipped."""
    texts: list[str] = []
    for entry in LANGUAGES[language]:
        path = fortunes_dir / entry
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
        for file in files:
            if file.suffix in (".dat", ".u8") or file.name.endswith(".sh"):
                continue
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            texts += [t.strip() for t in text.split("\n%\n") if 20 <= len(t.strip()) <= max_chars]
    return texts


def available_languages(fortunes_dir: Path = FORTUNES_DIR, min_texts: int = 10) -> list[str]:
    """Languages of LANGUAGES with at least `min_texts` fortunes installed."""
    return [lang for lang in LANGUAGES if len(read_fortunes(lang, fortunes_dir)) >= min_texts]


def make_text(
    root: Path, n: int, seed: int, languages: list[str] | None = None, fortunes_dir: Path = FORTUNES_DIR, **_
) -> Path:
    """`root/<lang>/<key>.txt`, `n` fortunes drawn evenly over the languages; class = index in `languages`.
    Writes `root/languages.txt` (one code a line, in class order). Returns root."""
    languages = languages or available_languages(fortunes_dir)
    if not languages:
        raise FileNotFoundError(f"no fortunes under {fortunes_dir}: apt-get install fortunes fortunes-de ...")
    rng = np.random.default_rng(seed)
    pools = {lang: read_fortunes(lang, fortunes_dir) for lang in languages}
    empty = [lang for lang, pool in pools.items() if not pool]
    if empty:
        raise FileNotFoundError(f"no fortunes for {empty} under {fortunes_dir}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "languages.txt").write_text("\n".join(languages) + "\n")
    for i in range(n):
        lang = languages[i % len(languages)]
        (root / lang).mkdir(exist_ok=True)
        (root / lang / f"text{i:06d}.txt").write_text(pools[lang][int(rng.integers(len(pools[lang])))] + "\n")
    return root


GENERATORS: dict[str, Callable[..., Path]] = {
    "video": make_video,
    "audio": make_audio,
    "audiovisual": make_audiovisual,
    "pointcloud": make_pointcloud,
    "text": make_text,
}
