"""Between pixels and latents: the SVD-xt VAE, in chunks so memory stays bounded.

Frames are (n, 3, H, W) in [-1, 1]; latents are (n, C, H/f, W/f), where C and f come from the VAE config.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLTemporalDecoder


def encode_frames(vae: AutoencoderKLTemporalDecoder, frames: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """The VAE posterior mean of each frame, unscaled, fp32, on the VAE's device.

    One encode serves both uses in SVFR: the mean times the scaling factor is the initial latent, and the
    mean itself (= the mode of the Gaussian) is the conditioning latent. The reference encodes twice."""
    encoder_dtype = vae.encoder.conv_in.weight.dtype
    device = vae.encoder.conv_in.weight.device
    latents = []
    with torch.no_grad():
        for start in range(0, len(frames), chunk):
            pixels = frames[start : start + chunk].to(device=device, dtype=encoder_dtype)
            latents.append(vae.encode(pixels).latent_dist.mean.to(torch.float32))
    return torch.cat(latents)


def decode_latents(vae: AutoencoderKLTemporalDecoder, latents: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Frames (n, 3, H, W) fp32 from scaled latents, decoded `chunk` frames at a time.

    The temporal decoder mixes frames only inside one call, so the chunking is part of the result: the
    reference decodes consecutive chunks of 16 from frame 0."""
    decoder_dtype = vae.decoder.conv_in.weight.dtype
    device = vae.decoder.conv_in.weight.device
    frames = []
    with torch.no_grad():
        for start in range(0, len(latents), chunk):
            z = (1 / vae.config.scaling_factor) * latents[start : start + chunk].to(device=device, dtype=torch.float32)
            frames.append(vae.decode(z.to(decoder_dtype), num_frames=len(z)).sample.to(torch.float32))
    return torch.cat(frames)
