"""Which model a config describes, CondInst or SipMask: every preset by name, a config from a dict by its
`arch` entry, and the test for a config. `condinst.config` holds CondInst's own dataclasses and presets,
`condinst.sipmask.config` / `.presets` SipMask's; the layers above ask here.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import PRESETS, CondInstConfig, ConfigError
from .sipmask.config import SipMaskConfig
from .sipmask.presets import SIPMASK_PRESETS


def all_presets() -> dict[str, Any]:
    """CondInst's presets and the other models' (SipMask), name -> factory."""
    return {**PRESETS, **SIPMASK_PRESETS}


def get_preset(name: str) -> CondInstConfig:
    """Return a fresh config for a named preset (see `PRESETS`, and SipMask's `SIPMASK_PRESETS`)."""
    presets = all_presets()
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(presets)}")
    return presets[name]().validate()


def config_from_dict(d: Mapping[str, Any]) -> CondInstConfig:
    """A config dict of any model (its `arch` entry decides: absent = CondInst, "sipmask" = SipMask)."""
    if isinstance(d, Mapping) and d.get("arch") == "sipmask":
        return SipMaskConfig.from_dict(dict(d))
    return CondInstConfig.from_dict(dict(d) if isinstance(d, Mapping) else d)


def is_config(obj: Any) -> bool:
    """Whether `obj` is a model config (CondInst or SipMask)."""
    return isinstance(obj, (CondInstConfig, SipMaskConfig))
