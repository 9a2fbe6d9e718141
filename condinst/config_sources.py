"""`load_config`: every way a model config is given, in one place (a config, a preset name, an AdelaiDet YAML,
our JSON dump, a checkpoint file or a loaded checkpoint), for the CLI's `--config`, the predictor and training.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .arch import all_presets, config_from_dict, get_preset, is_config
from .checkpoint import config_from_checkpoint, read_checkpoint, split_checkpoint
from .config import CondInstConfig, ConfigError
from .yaml_config import config_from_yaml


CHECKPOINT_SUFFIXES = (".pth", ".pt")


def load_config(source: "CondInstConfig | str | os.PathLike | Mapping[str, Any]") -> CondInstConfig:
    """Every way a config is given, in one place (CLI `--config`, the predictor, training resume).

    `source` is a config (returned as is), a preset name (`PRESETS`), an AdelaiDet YAML file or
    `cfg.dump()`, our JSON dump (a run's `config.json`, optionally `{"config": {...}}`), a checkpoint
    file (its stored config, or the architecture recognised from an official one's keys), or an
    already loaded checkpoint / config mapping. Raises ConfigError (or CheckpointError) in one line.
    """
    if is_config(source):
        return source
    if isinstance(source, Mapping):
        return _config_from_mapping(source)
    text = str(source)
    presets = all_presets()
    if text in presets:
        return get_preset(text)
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json", *CHECKPOINT_SUFFIXES):
        raise ConfigError(f"--config {text!r} is neither a preset ({', '.join(presets)}) nor a .yaml, .json or "
                          "checkpoint file")
    if not path.is_file():
        raise ConfigError(f"--config {text}: no such file")
    if suffix in (".yaml", ".yml"):
        return config_from_yaml(text)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"--config {text}: not valid JSON ({e})") from None
        return _config_from_mapping(data)
    return _config_from_mapping(read_checkpoint(path))


def _config_from_mapping(data: Any) -> CondInstConfig:
    """A config dict, `{"config": {...}}`, or a loaded checkpoint (ours, AdelaiDet or mmdetection)."""
    if isinstance(data, Mapping) and "backbone" not in data and isinstance(data.get("config"), Mapping) \
            and "model" not in data:
        data = data["config"]
    if isinstance(data, Mapping) and ("model" in data or "state_dict" in data):
        sd, kind, extras = split_checkpoint(dict(data))
        return config_from_checkpoint(extras, sd, kind)
    try:
        return config_from_dict(data).validate()
    except TypeError as e:
        raise ConfigError(f"invalid config: {e}") from None
