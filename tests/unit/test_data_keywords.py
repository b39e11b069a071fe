"""datamodules.keywords: settings passed on by keyword (picked by the receiver's signature), defaults reused."""

from __future__ import annotations

import inspect

import pytest

from datamodules.audio import AudioInputs
from datamodules.keywords import declared_defaults, keyword_args
from datamodules.transforms import audio as A
from datamodules.video import VideoFrames, VideoInputs


def _target(a: int, b: str = "x", *, c: float = 1.0, **rest: object) -> tuple:
    return a, b, c, rest


def test_keyword_args_picks_the_names_the_target_declares():
    values = {"a": 1, "c": 2.5, "other": "left out", "rest": "not the ** parameter"}
    assert keyword_args(_target, values) == {"a": 1, "c": 2.5}
    assert _target(**keyword_args(_target, values)) == (1, "x", 2.5, {})


def test_keyword_args_of_a_class_is_its_init_without_self():
    assert keyword_args(VideoFrames, {"self": None, "num_frames": 8, "backend": "auto"}) == {
        "num_frames": 8,
        "backend": "auto",
    }


def test_declared_defaults_leaves_out_required_parameters():
    assert declared_defaults(_target) == {"b": "x", "c": 1.0}


def test_audio_inputs_forward_every_log_mel_setting():
    """keyword_args falls back to LogMel's default for a name AudioInputs lacks: every LogMel setting but the two
    AudioInputs names differently (and eps, not a setting) must be an AudioInputs parameter of the same name."""
    inputs = inspect.signature(AudioInputs).parameters
    missing = [n for n in inspect.signature(A.LogMel).parameters if n not in inputs]
    assert sorted(missing) == ["eps", "norm", "scale"]


@pytest.mark.parametrize("name", ["n_fft", "hop_length", "n_mels", "f_min", "f_max"])
def test_audio_inputs_mel_defaults_are_log_mels(name):
    assert inspect.signature(AudioInputs).parameters[name].default == declared_defaults(A.LogMel)[name]


def test_video_inputs_declare_every_video_frames_setting():
    inputs = inspect.signature(VideoInputs).parameters
    assert [n for n in inspect.signature(VideoFrames).parameters if n not in inputs] == []
