import ctypes
import sys

import pytest
import torch

from medsemgan import runtime

glibc_only = pytest.mark.skipif(runtime._glibc() is None, reason="the allocator setting is glibc-only")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


def _mallinfo2() -> _MallInfo2:
    libc = runtime._glibc()
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2()


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setattr(runtime, "_applied", None)


@glibc_only
def test_freed_activation_memory_stays_in_the_heap(fresh_state):
    """After the setting, freeing a 24 MiB tensor (a bf16 [16, 48, 128, 128] activation) leaves
    it in the heap for the next step instead of unmapping it; before, glibc hands blocks this
    large back to the kernel (they are mmapped: ``hblkhd``)."""
    assert runtime.keep_freed_memory() is True
    before = _mallinfo2()
    x = torch.empty(16, 48, 128, 128, dtype=torch.bfloat16)
    x.fill_(1)
    during = _mallinfo2()
    assert during.hblkhd - before.hblkhd < 24 * 2**20  # not a new mmapped block
    del x
    after = _mallinfo2()
    assert after.fordblks - during.fordblks >= 24 * 2**20  # its memory is free inside the heap


@glibc_only
def test_is_idempotent_and_can_be_switched_off(fresh_state, monkeypatch):
    assert runtime.keep_freed_memory() is True
    assert runtime.keep_freed_memory() is True
    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setenv(runtime.ENV_SWITCH, "0")
    assert runtime.keep_freed_memory() is False


def test_leaves_other_platforms_alone(fresh_state, monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert runtime._glibc() is None
    assert runtime.keep_freed_memory() is False


def test_functions_that_set_torch_threads_put_them_back():
    """Issue 18: a library function's --threads must not change the caller's thread count."""
    import importlib

    import torch

    from medsemgan.runtime import restores_torch_threads

    before = torch.get_num_threads()

    @restores_torch_threads
    def sets_one_thread_and_fails():
        torch.set_num_threads(1)
        raise RuntimeError("boom")

    @restores_torch_threads
    def sets_one_thread():
        torch.set_num_threads(1)
        return torch.get_num_threads()

    try:
        assert sets_one_thread() == 1
        assert torch.get_num_threads() == before
        with pytest.raises(RuntimeError):
            sets_one_thread_and_fails()
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
    for module in ("medsemgan.bench.model", "medsemgan.bench.infer", "medsemgan.bench.ops", "medsemgan.bench.train",
                   "medsemgan.evaluation.report"):
        run = importlib.import_module(module).run
        assert getattr(run, "__wrapped__", None) is not None, f"{module}.run does not restore the thread count"
