"""Several GPUs: each worker runs on its own device, and what reads a GPU reads that one
(docs/architecture.md, "Workers, claims and leases"). What the CPU allows: the CUDA calls are injected."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from svfrd.config import load_config
from svfrd.engines.svfr import memory
from svfrd.ops import doctor
from svfrd.service.worker import use_worker_device
from svfrd.service.workers import worker_pool


def two_gpu_config(folder: Path, devices: str = '["cuda:0", "cuda:1"]'):
    config = folder / "config.toml"
    config.write_text(f'[[inbox]]\npath = "inbox"\n\n[engine]\nname = "classical"\ndevices = {devices}\n')
    return load_config(config)


def test_each_worker_gets_its_device_and_makes_it_current(tmp_path: Path) -> None:
    """Before, every worker's current CUDA device stayed GPU 0: whatever allocates on the current device (the
    CUDA context, CUDA graphs, library kernels) landed on GPU 0 in the cuda:1 worker too."""
    pool = worker_pool(two_gpu_config(tmp_path))
    assert [w.config.engine.device for w in pool] == ["cuda:0", "cuda:1"]
    made_current: list[int] = []
    for worker in pool:
        use_worker_device(worker.config.engine.device, set_device=made_current.append)
    assert made_current == [0, 1]
    for device in ("cpu", "auto", "cuda"):
        use_worker_device(device, set_device=made_current.append)
    assert made_current == [0, 1]


def test_the_free_memory_for_the_tier_is_that_of_the_workers_gpu(monkeypatch) -> None:
    asked: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: asked.append(device) or (5, 9))
    assert memory.cuda_free_bytes(torch.device("cuda:1")) == 5
    assert asked == [torch.device("cuda:1")]


def fake_gpus(monkeypatch, count: int) -> list[int]:
    """`count` visible GPUs of 24 GiB; returns the indexes whose memory was read."""
    read: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: SimpleNamespace(name=f"GPU{index}", total_memory=24 * 2**30))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: read.append(index) or (20 * 2**30, 24 * 2**30))
    return read


def test_doctor_checks_every_workers_gpu(tmp_path: Path, monkeypatch) -> None:
    """Before, doctor checked `[engine] device` only (GPU 0 for "auto"): a missing cuda:1 went unnoticed."""
    read = fake_gpus(monkeypatch, 2)
    config = two_gpu_config(tmp_path)
    check = doctor.check_gpu(config)
    assert check.ok and read == [0, 1]
    assert "cuda:0 GPU0" in check.detail and "cuda:1 GPU1" in check.detail
    assert doctor.gpu_required(config)
    fake_gpus(monkeypatch, 1)
    check = doctor.check_gpu(config)
    assert not check.ok and "cuda:1 asked for, but only 1 GPU(s) visible" in check.detail
    assert "nvidia-smi -L" in check.fix
