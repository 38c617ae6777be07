import os
import stat

import pytest

from medsemgan.io_utils import atomic_path


def test_atomic_path_renames_on_success_with_normal_permissions(tmp_path):
    final = tmp_path / "sub" / "mask.nii.gz"
    with atomic_path(final) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == final.parent
        tmp.write_bytes(b"data")
        assert not final.exists()
    assert final.read_bytes() == b"data"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(final.stat().st_mode) == 0o666 & ~umask


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []


def test_file_sha256_matches_hashlib_across_blocks(tmp_path):
    import hashlib
    import os

    from medsemgan.io_utils import file_sha256

    data = os.urandom((1 << 20) + 123)  # more than one read block
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1])
    assert file_sha256(path) != hashlib.sha256(data).hexdigest()
