"""The op loader: forced reference, remembered failure with one warning, cache keys, stale builds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from medsemgan.ops import loader
from medsemgan.ops.bias_act import bias_act, bias_act_reference
from medsemgan.ops.upfirdn2d import setup_filter, upfirdn2d_reference, upsample2d

REPO = Path(__file__).resolve().parents[2]


def _failing_build(counter):
    def build(kind, verbose=False):
        counter.append(kind)
        raise RuntimeError("simulated compiler failure: error: expected ';'")

    return build


def test_forced_reference_never_builds(monkeypatch):
    monkeypatch.setenv(loader.ENV_MODE, "reference")
    monkeypatch.setattr(loader, "_modules", {})
    calls = []
    monkeypatch.setattr(loader, "build", _failing_build(calls))
    x = torch.randn(2, 3, 4, 4)
    b = torch.randn(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning either
        y = bias_act(x, b, act="lrelu", impl="fused")
        z = upsample2d(x, setup_filter([1, 3, 3, 1]), impl="fused")
    assert calls == []
    assert torch.equal(y, bias_act_reference(x, b, act="lrelu"))
    f = setup_filter([1, 3, 3, 1])
    assert torch.equal(z, upfirdn2d_reference(x, f, up=2, padding=[2, 1, 2, 1], gain=4))


def test_build_failure_is_remembered_and_warned_once(monkeypatch):
    monkeypatch.setattr(loader, "_modules", {})
    calls = []
    monkeypatch.setattr(loader, "build", _failing_build(calls))
    x = torch.randn(2, 3, 4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [bias_act(x, act="lrelu") for _ in range(3)]
        upsample2d(x, setup_filter([1, 3, 3, 1]), impl="fused")
    fallback = [w for w in caught if "could not be built" in str(w.message)]
    assert len(fallback) == 1, [str(w.message) for w in caught]
    assert "simulated compiler failure" in str(fallback[0].message)
    assert issubclass(fallback[0].category, RuntimeWarning)
    assert calls == ["cpu"]  # one try, not one per call
    for out in outs:
        assert torch.equal(out, bias_act_reference(x, act="lrelu"))
    assert "cpu" in loader.status()["failed"]


def test_fused_mode_makes_a_failed_build_an_error(monkeypatch):
    monkeypatch.setenv(loader.ENV_MODE, "fused")
    monkeypatch.setattr(loader, "_modules", {})
    monkeypatch.setattr(loader, "build", _failing_build([]))
    with pytest.raises(loader.OpsBuildError, match="simulated compiler failure"):
        bias_act(torch.randn(2, 3), act="lrelu")
    with pytest.raises(loader.OpsBuildError):  # remembered, still loud
        bias_act(torch.randn(2, 3), act="lrelu")


def test_unknown_mode_is_rejected(monkeypatch):
    monkeypatch.setenv(loader.ENV_MODE, "fast")
    with pytest.raises(ValueError, match="MEDSEMGAN_OPS"):
        loader.mode()


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_cache_key_follows_every_source(tmp_path, kind):
    copy = tmp_path / "cuda"
    shutil.copytree(loader.SOURCE_DIR, copy)
    base = loader.cache_key(kind, copy)
    assert base == loader.cache_key(kind, copy)  # deterministic
    for name in loader.HEADERS + loader.EXTRA_HEADERS[kind] + loader.SOURCES[kind]:
        path = copy / name
        original = path.read_bytes()
        path.write_bytes(original + b"\n// changed\n")
        assert loader.cache_key(kind, copy) != base, name
        path.write_bytes(original)
    assert loader.cache_key(kind, copy) == base


def test_cache_key_follows_torch_version_and_flags(monkeypatch):
    base = loader.cache_key("cpu")
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert loader.cache_key("cpu") != base
    monkeypatch.undo()
    monkeypatch.setattr(loader, "CPU_CFLAGS", loader.CPU_CFLAGS + ("-DOTHER",))
    assert loader.cache_key("cpu") != base
    assert loader.cache_key("cpu") != loader.cache_key("cuda")


def test_stale_private_build_dirs_are_removed(tmp_path):
    stale = tmp_path / ".build-cpu-abc-123-dead"
    fresh = tmp_path / ".build-cpu-abc-456-live"
    for d in (stale, fresh):
        d.mkdir()
        (d / "lock").write_text("")
    old = time.time() - loader.STALE_BUILD_SECONDS - 60
    os.utime(stale, (old, old))
    loader._remove_stale_builds(tmp_path)
    assert not stale.exists()
    assert fresh.exists()  # may belong to a build running right now


def test_cached_build_is_imported_without_compiling(cpu_ext, monkeypatch):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise AssertionError("compiled again although a cached build exists")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    module = loader.build("cpu")
    x = torch.randn(4, 3)
    assert torch.equal(module.bias_act(x, None, None, 1, 1, 0.2, 1.0, -1.0), torch.nn.functional.leaky_relu(x, 0.2))


def test_ninja_from_the_interpreter_dir_is_put_on_path(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    loader._ensure_ninja_on_path()
    assert os.environ["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    if (Path(sys.executable).parent / "ninja").exists():
        assert shutil.which("ninja") == str(Path(sys.executable).parent / "ninja")


def test_import_compiles_nothing(tmp_path):
    env = dict(os.environ, MEDSEMGAN_OPS_CACHE=str(tmp_path / "ops"))
    code = (
        "import medsemgan.ops.bias_act, medsemgan.ops.upfirdn2d\n"
        "from medsemgan.ops import loader\n"
        "assert not loader._modules and not loader._failures\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "ops").exists()


def test_cuda_check_refuses_a_cpu_torch():
    if torch.version.cuda is not None:
        pytest.skip("this torch is a CUDA build; `make cuda-check` runs the real check")
    out = subprocess.run(
        [sys.executable, str(REPO / "cuda" / "check_build.py")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1
    assert "CPU build" in out.stderr
