"""SVFR's checkpoints: where the sampler stood, so a restarted job goes on from there (docs/architecture.md,
"Resume").

Each denoising run has a name ("pass1", "pass2-0", "pass2-1", ... one per pass-2 segment); after every
`every` steps its latents (fp32, C·h·w·4 bytes per frame: 64 KiB at 512x512) and the call's random generator
state are saved as a checkpoint of that name (svfrd.jobs.checkpoints: atomic, checked, the last two kept while
the run goes on, its final state alone once it is done). Pass
1's result (the reference latent and ID tokens) is saved once. A resumed call restores the generator, so the
noise of later segments is drawn exactly as in an uninterrupted run, and the result is the same bit for bit.
A finished run's last checkpoint holds its final latents: a resumed call only decodes them again.
"""

from __future__ import annotations

import io
from typing import Callable

import torch

from svfrd.engines.svfr.sampler import SamplerState
from svfrd.jobs.checkpoints import CheckpointFolder

#: Denoising steps between checkpoints: the most steps a crash can lose in one run.
EVERY_STEPS = 1
REFERENCE = "pass1-result"


def _to_bytes(tensors: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


def _from_bytes(payload: bytes) -> dict:
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


class SamplerCheckpoints:
    """One call's sampler checkpoints in a job's checkpoint folder, and what a resumed call reused."""

    def __init__(self, store: CheckpointFolder, every: int = EVERY_STEPS):
        self.store, self.every = store, every
        self.steps_reused = 0
        self.reference_reused = False

    def resume(self, name: str, generator: torch.Generator) -> SamplerState | None:
        """The saved state of run `name` (and the generator as it was then), or None to start it afresh."""
        checkpoint = self.store.load(name)
        if checkpoint is None:
            return None
        saved = _from_bytes(checkpoint.payload)
        generator.set_state(saved["generator"])
        self.steps_reused += int(checkpoint.meta["step"])
        return SamplerState(int(checkpoint.meta["step"]), saved["latents"])

    def saver(self, name: str, generator: torch.Generator, steps: int) -> Callable[[int, torch.Tensor], None]:
        def save(step: int, latents: torch.Tensor) -> None:
            if step % self.every == 0 or step == steps:
                # Strides kept as they are (the UNet gives channels-last latents): the VAE and the UNet round
                # differently on another memory layout, and the result must stay bit for bit.
                payload = _to_bytes({"latents": latents.detach().to("cpu", torch.float32),
                                     "generator": generator.get_state()})
                # A finished run keeps its final state only: it halves what a long video's checkpoints hold.
                self.store.save(name, {"step": step, "frames": int(latents.shape[0])}, payload,
                                keep=1 if step == steps else 2)
        return save

    def reference(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Pass 1's saved result (reference latent, ID tokens or None), with the generator as it was after it."""
        checkpoint = self.store.load(REFERENCE)
        if checkpoint is None:
            return None
        saved = _from_bytes(checkpoint.payload)
        generator.set_state(saved["generator"])
        self.reference_reused = True
        return saved["ref_latent"], saved.get("id_tokens")

    def save_reference(self, reference: tuple[torch.Tensor, torch.Tensor | None], generator: torch.Generator) -> None:
        ref_latent, id_tokens = reference
        tensors = {"ref_latent": ref_latent.detach().cpu(), "generator": generator.get_state()}
        if id_tokens is not None:
            tensors["id_tokens"] = id_tokens.detach().cpu()
        self.store.save(REFERENCE, {}, _to_bytes(tensors))

    def details(self) -> dict:
        return {"sampler_steps_reused": self.steps_reused, "pass1_reused": self.reference_reused}
