"""datamodules.tarstream: the shard tar reader yields exactly what tarfile reads, for every tar dialect and
compression tarfile writes, and fails loudly (never silently) on truncated, corrupt or non-tar streams."""

import bz2
import gzip
import io
import lzma
import os
import tarfile

import pytest

from datamodules.tarstream import NotATarError, TruncatedError, _number, iter_file_members, iter_members


def _tar_bytes(fmt: int, members: list[tuple[str, bytes]], extras: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        if extras:
            d = tarfile.TarInfo("a-directory")
            d.type = tarfile.DIRTYPE
            tar.addfile(d)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extras:
            link = tarfile.TarInfo("a-link.cls")
            link.type, link.linkname = tarfile.SYMTYPE, "x" * 150  # a long link name: GNU 'K' / PAX linkpath
            tar.addfile(link)
    return buf.getvalue()


MEMBERS = [
    ("s0.cls", b"3"),
    ("s0.npy", os.urandom(1000)),
    ("s1.cls", b""),  # an empty member
    ("s1.txt", "Grüße, 世界".encode()),
    ("deep/" * 30 + "s2.flac", os.urandom(5000)),  # 180-char path: ustar prefix, GNU 'L' or PAX path
    ("s3.mp4", os.urandom(3 * 512)),  # exactly block-aligned
    ("ünïcödé-" * 20 + ".json", b"{}"),  # long non-ASCII name
]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_equal_tarfile_for_gnu_and_pax(fmt):
    data = _tar_bytes(fmt, MEMBERS)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]
    got = list(iter_members(io.BytesIO(data)))
    assert got == expected == MEMBERS


def test_ustar_prefix_names():
    members = [(n, d) for n, d in MEMBERS if len(n.encode()) <= 200 and n.isascii()]  # what ustar can hold
    assert any(len(n) > 100 for n, _ in members)  # uses the prefix field
    assert list(iter_members(io.BytesIO(_tar_bytes(tarfile.USTAR_FORMAT, members, extras=False)))) == members


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_compressed_archives_are_recognised_by_magic(compress):
    data = compress(_tar_bytes(tarfile.PAX_FORMAT, MEMBERS))
    assert list(iter_members(io.BytesIO(data))) == MEMBERS


def test_short_reads():
    """A pipe may return fewer bytes than asked: the reader keeps reading."""

    class Trickle(io.RawIOBase):
        def __init__(self, data):
            self.data, self.pos = data, 0

        def readable(self):
            return True

        def read(self, n=-1):
            n = 97 if n is None or n < 0 else min(n, 97)
            out = self.data[self.pos : self.pos + n]
            self.pos += len(out)
            return out

    data = _tar_bytes(tarfile.GNU_FORMAT, MEMBERS)
    assert list(iter_members(Trickle(data))) == MEMBERS


def test_truncated_member_names_it_after_yielding_the_ones_before():
    data = _tar_bytes(tarfile.GNU_FORMAT, MEMBERS, extras=False)
    cut = data.index(MEMBERS[4][1][:64]) + 100  # inside the .flac member's data
    got = []
    with pytest.raises(TruncatedError, match="truncated") as err:
        for member in iter_members(io.BytesIO(data[:cut])):
            got.append(member)
    assert got == MEMBERS[:4]
    assert err.value.member == MEMBERS[4][0]


def test_corrupt_header_after_the_first_is_a_read_error_not_garbage():
    data = bytearray(_tar_bytes(tarfile.USTAR_FORMAT, MEMBERS[:2], extras=False))
    data[512 + 512 + 10] ^= 0xFF  # second header's name: checksum no longer fits
    with pytest.raises(tarfile.ReadError, match="checksum") as err:
        list(iter_members(io.BytesIO(bytes(data))))
    assert not isinstance(err.value, NotATarError)


@pytest.mark.parametrize("data", [b"", b"hello", b"<html>not a tar</html>" * 100, os.urandom(4096)])
def test_not_a_tar(data):
    with pytest.raises(NotATarError, match="not a tar archive"):
        list(iter_members(io.BytesIO(data)))


def test_missing_end_of_archive_blocks_are_tolerated():
    data = _tar_bytes(tarfile.USTAR_FORMAT, MEMBERS[:2], extras=False)
    body = data[: 5 * 512]  # 2 headers + 1 + 2 blocks of data, no zero blocks
    assert list(iter_members(io.BytesIO(body))) == MEMBERS[:2]


def test_header_numbers_octal_and_gnu_base256():
    assert _number(b"0000000144\x00 ", "size") == 100
    assert _number(b"   144 \x00\x00\x00\x00", "size") == 100
    big = 20 * 2**30  # 20 GiB: too large for 11 octal digits
    assert _number(bytes([0x80]) + big.to_bytes(11, "big"), "size") == big
    with pytest.raises(tarfile.ReadError, match="size field"):
        _number(b"12x4\x00", "size")


def test_file_members_are_memory_mapped_with_views_only_where_asked(tmp_path):
    path = tmp_path / "s.tar"
    path.write_bytes(_tar_bytes(tarfile.PAX_FORMAT, MEMBERS))
    got = list(iter_file_members(str(path), view_exts=("flac", "mp4"), view_min=4096))
    assert [(n, bytes(d)) for n, d in got] == MEMBERS
    kinds = {n.rpartition(".")[2]: type(d) for n, d in got}
    assert kinds["flac"] is memoryview  # 5,000 bytes, asked for: a view of the map
    assert kinds["mp4"] is bytes and kinds["npy"] is bytes  # under view_min / not asked for: bytes
    assert all(type(d) is bytes for _, d in iter_file_members(str(path)))


def test_file_members_fall_back_to_the_stream_for_compressed_and_fail_like_it(tmp_path):
    gz = tmp_path / "s.tar.gz"
    gz.write_bytes(gzip.compress(_tar_bytes(tarfile.GNU_FORMAT, MEMBERS)))
    assert list(iter_file_members(str(gz), view_exts=("flac",), view_min=1)) == MEMBERS
    data = _tar_bytes(tarfile.GNU_FORMAT, MEMBERS, extras=False)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: data.index(MEMBERS[4][1][:64]) + 100])
    with pytest.raises(TruncatedError) as err:
        list(iter_file_members(str(cut)))
    assert err.value.member == MEMBERS[4][0]
    for i, junk in enumerate([b"", b"hello", os.urandom(4096)]):
        (tmp_path / f"junk{i}.tar").write_bytes(junk)
        with pytest.raises(NotATarError):
            list(iter_file_members(str(tmp_path / f"junk{i}.tar")))
