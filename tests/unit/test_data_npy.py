"""datamodules.transforms.npy: equals np.load on every layout it meets, refuses objects and malformed files."""

import io
import pickle

import numpy as np
import pytest

from datamodules.transforms.npy import decode_npy


def _npy(arr, version=None, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    if version is None:
        np.save(buf, arr, allow_pickle=allow_pickle)
    else:
        np.lib.format.write_array(buf, arr, version=version, allow_pickle=allow_pickle)
    return buf.getvalue()


ARRAYS = [
    np.arange(784, dtype=np.uint8).reshape(28, 28),
    np.random.default_rng(0).random((2048, 3), dtype=np.float32),
    np.asfortranarray(np.random.default_rng(1).random((4, 6))),
    np.zeros((0, 3), np.float32),
    np.array(5.0),
    np.arange(12, dtype=">i4").reshape(3, 4),  # big-endian
    np.zeros(3, dtype=[("x", "<f4"), ("y", "u1")]),  # structured
]


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
@pytest.mark.parametrize("version", [None, (1, 0), (2, 0), (3, 0)])
def test_equals_np_load(arr, version):
    data = _npy(arr, version)
    for _ in range(2):  # the second call takes the cached header
        out = decode_npy(data)
        ref = np.load(io.BytesIO(data), allow_pickle=False)
        assert out.dtype == ref.dtype and out.shape == ref.shape
        np.testing.assert_array_equal(out, ref)
        assert out.flags.writeable


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "RAN"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    data = _npy(np.array([Payload()], dtype=object), allow_pickle=True)
    assert pickle.dumps(Payload())  # a live payload: unpickling it would create the marker
    with pytest.raises(ValueError, match="object array"):
        decode_npy(data)
    assert not marker.exists()


def test_malformed_files_name_the_problem():
    good = _npy(np.arange(10, dtype=np.int16))
    with pytest.raises(ValueError, match="not an npy file"):
        decode_npy(b"PK\x03\x04" + good[4:])
    with pytest.raises(ValueError, match="version 9"):
        decode_npy(good[:6] + b"\x09" + good[7:])
    with pytest.raises(ValueError, match=r"has 18 bytes, its header says \(10,\) int16 \(20 bytes\)"):
        decode_npy(good[:-2])
