"""How long does `svfrd verify-models` take on a full-size model folder?

Builds, in a temporary folder that is deleted afterwards (never committed), a model folder in the real layout
with random weights at the released files' sizes: the SVFR UNet from SVD-xt's config with 12 input channels in
fp16 (≈ 3.05 GB), the fp16 VAE as safetensors, the full iresnet100 ArcFace and id_linear in fp32. Then times
the first verification (structure, sha256, zip CRCs; writes the lock), the quick run that follows (lock only),
and `--full`.

    python bench/bench_verify_models.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel  # noqa: E402

from svfrd.engines.svfr.identity import IdProjection, IResNet  # noqa: E402
from svfrd.engines.svfr.model_folder import (  # noqa: E402
    ARCFACE_WEIGHTS,
    ID_LINEAR_WEIGHTS,
    SCHEDULER_CONFIG,
    UNET_CONFIG,
    UNET_WEIGHTS,
    VAE_DIR,
)
from svfrd.weights.files import human_size  # noqa: E402
from svfrd.weights.verify import verify_models  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "svd-xt"


def random_state(module_on_meta: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random tensors of the module's keys and shapes, made without initialising the module itself."""
    state = {}
    for key, tensor in module_on_meta.state_dict().items():
        wanted = dtype if tensor.dtype.is_floating_point else tensor.dtype
        value = torch.empty(tensor.shape, dtype=wanted)
        state[key] = value.uniform_(-0.1, 0.1) if wanted.is_floating_point else value.zero_()
    return state


def build_folder(folder: Path) -> None:
    for part, name in (("unet", UNET_CONFIG), ("scheduler", SCHEDULER_CONFIG), ("vae", f"{VAE_DIR}/config.json")):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        source = FIXTURES / part / ("scheduler_config.json" if part == "scheduler" else "config.json")
        shutil.copy(source, folder / name)
    unet_config = json.loads((FIXTURES / "unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel.from_config({**unet_config, "in_channels": 12})
        vae = AutoencoderKLTemporalDecoder.from_config(json.loads((FIXTURES / "vae" / "config.json").read_text()))
        arcface, projection = IResNet(), IdProjection()
    (folder / UNET_WEIGHTS).parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_state(unet, torch.float16), folder / UNET_WEIGHTS)
    from safetensors.torch import save_file

    save_file(random_state(vae, torch.float16), str(folder / VAE_DIR / "diffusion_pytorch_model.fp16.safetensors"))
    torch.save(random_state(arcface, torch.float32), folder / ARCFACE_WEIGHTS)
    torch.save(random_state(projection, torch.float32), folder / ID_LINEAR_WEIGHTS)


def timed(label: str, folder: Path, full: bool = False) -> None:
    started = time.perf_counter()
    report = verify_models(folder, full=full)
    seconds = time.perf_counter() - started
    assert report.ok, [f.problem for f in report.problems]
    print(f"{label:<44} {seconds:7.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", metavar="DIR", help="build the folder here and keep it")
    args = parser.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="svfrd-bench-models-"))
    try:
        started = time.perf_counter()
        build_folder(folder)
        total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"built a full-size random-weight folder ({human_size(total)}) in {time.perf_counter() - started:.0f} s")
        timed("first verification (structure, sha256, CRCs)", folder)
        timed("quick (lock: sizes and times)", folder)
        timed("--full (everything again)", folder, full=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
