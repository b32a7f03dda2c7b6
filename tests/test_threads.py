"""`--threads auto`: threads follow the cores other programs leave free (genlab/threads.py)."""

import pytest
import torch

from genlab import threads


@pytest.fixture(autouse=True)
def keep_one_thread():
    yield
    torch.set_num_threads(1)
    threads._state.clear()
    threads._state["auto"] = False


def test_explicit_and_env_thread_counts(monkeypatch):
    assert threads.configure_threads("1")["threads"] == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.configure_threads("auto") == {"threads": 1, "reason": "OMP_NUM_THREADS"}
    with pytest.raises(ValueError):
        threads.configure_threads("0")


def test_auto_uses_the_cores_others_leave_free_and_follows_changes(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    # samples (time s, machine busy CPU-s, own CPU-s): over 1 s, 3 busy cores of which 0 are ours -> 1 free
    samples = iter([(0.0, 0.0, 0.0), (1.0, 3.0, 0.0)])
    monkeypatch.setattr(threads, "_sample", lambda: next(samples))
    info = threads.configure_threads("auto")
    assert info["threads"] == 1 and "1.0 of 4 cores free" in info["reason"]
    # 30 s later: the machine was busy 4 cores x 30 s, 3.9 cores of which were ours -> others use 0.1 -> 4 threads
    monkeypatch.setattr(threads, "_sample", lambda: (31.0, 3.0 + 120.0, 117.0))
    monkeypatch.setattr(threads.time, "monotonic", lambda: 31.0)
    assert threads.adjust() == 4 and torch.get_num_threads() == 4
    assert threads.adjust() is None  # not due again yet


def test_torchrun_processes_share_the_cores(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    assert threads._threads_for(2.0) == 1
