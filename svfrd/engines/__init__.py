"""Choosing the restoration engine from the configuration.

`[engine] name`: "classical" (CPU, no weights), "svfr" (the SVFR model; imported only then, so a CPU-only
install never loads diffusers), "auto" (SVFR when its weights are verified (`svfrd verify-models`) and a CUDA GPU is present, else classical, and
the log says why), or an import path "package.module:ClassName" whose class is called with the EngineConfig.
Such a plug-in's class attribute `option_names` may add options of its own to the table in svfrd.domain;
config reads it without creating the engine (`svfrd.config.plugin_option_names`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from svfrd.config import EngineConfig, import_engine_class
from svfrd.engines.interface import Engine
from svfrd.errors import ConfigError

log = logging.getLogger(__name__)


def create_engine(cfg: EngineConfig, face_model: Path | None = None) -> Engine:
    """`face_model` is the `[faces] model` file; SVFR uses it to find the face in its reference frame."""
    name = cfg.name
    if name == "auto":
        name, reason = _auto_choice(cfg)
        log.info("engine = auto: using %s (%s)", name, reason)
    if name == "classical":
        from svfrd.engines.classical import ClassicalEngine

        return ClassicalEngine(cfg)
    if name == "svfr":
        from svfrd.engines.svfr.engine import SvfrEngine

        return SvfrEngine(cfg, face_model=face_model)
    if ":" in name:
        return _engine_from_import_path(name, cfg)
    raise ConfigError(
        f"[engine] name = {cfg.name!r} is not an engine; use \"auto\", \"svfr\", \"classical\" "
        "or an import path \"package.module:ClassName\""
    )


def _auto_choice(cfg: EngineConfig) -> tuple[str, str]:
    from svfrd.weights.lock import unverified_reason  # sizes and times only: no torch, no diffusers

    problem = unverified_reason(cfg.svfr.models_dir)
    if problem is not None:
        return "classical", f"SVFR weights are not usable: {problem}"
    if cfg.device == "cpu":
        return "classical", "[engine] device = \"cpu\"; SVFR needs a CUDA GPU"
    import torch

    if not torch.cuda.is_available():
        return "classical", "no CUDA GPU is available; SVFR needs one"
    return "svfr", f"weights in {cfg.svfr.models_dir} verified and a CUDA GPU is present"


def _engine_from_import_path(path: str, cfg: EngineConfig) -> Engine:
    try:
        cls = import_engine_class(path)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"[engine] name = {path!r}: cannot import it ({err})") from err
    engine = cls(cfg)
    if not isinstance(engine, Engine):
        raise ConfigError(f"[engine] name = {path!r} does not implement svfrd.engines.interface.Engine")
    return engine
