"""Compose a run's configuration from conf/ and command-line style overrides, then validate it.

Flows call :func:`compose` with a list of Hydra override strings
(``["data=synth_easy", "data.synth.seed=3", "train.epochs=5"]``). The composed tree
is merged onto typed dataclass schemas (``infra/schema/``): an unknown key, a value
of the wrong type or a value out of range is a :class:`ConfigError` before any work
starts.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from infra.schema.cluster import ClusterConfig
from infra.schema.data import DataConfig
from infra.schema.model import ModelConfig
from infra.schema.preprocess import PreprocessConfig
from infra.schema.storage import StorageConfig
from infra.schema.train import TrainConfig
from infra.schema.tune import TuneConfig

CONF_DIR = Path(os.environ.get("AVS_CONF_DIR", Path(__file__).resolve().parent.parent / "conf"))


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    output: str = "outputs"  # everything a run writes (reports, checkpoints), local or s3://
    seed: int = 0


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


_SECRET_KEYS = ("storage.key", "storage.secret")


def redact_overrides(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """Overrides fit for logs and reports: credential values replaced by ***."""
    out = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        out.append(f"{o.split('=', 1)[0]}=***" if key in _SECRET_KEYS and "=" in o else o)
    return out


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> Config:
    """Compose conf/{config_name}.yaml with overrides and return the validated Config."""
    overrides = list(overrides)
    shown = redact_overrides(overrides)
    # conf/config.yaml lists "schema" first in its defaults: Hydra then knows every key and
    # type while composing, so a typo in an override fails here, naming the key.
    ConfigStore.instance().store(name="schema", node=Config)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            raw = hydra_compose(config_name=config_name, overrides=overrides)
    except HydraException as e:
        cause = f" ({_first_line(e.__cause__)})" if e.__cause__ else ""
        raise ConfigError(redact_overrides_in(f"cannot compose config with overrides {shown}: {e}{cause}", overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
        return OmegaConf.to_object(merged)  # builds the dataclasses, running their __post_init__ checks
    except OmegaConfBaseException as e:
        raise ConfigError(redact_overrides_in(f"invalid config (overrides {shown}): {_first_line(e)}", overrides)) from None
    except ValueError as e:
        raise ConfigError(redact_overrides_in(f"invalid config (overrides {shown}): {e}", overrides)) from None


def redact_overrides_in(text: str, overrides: list[str]) -> str:
    """Remove credential values given as overrides from a message (Hydra quotes overrides back)."""
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+~") in _SECRET_KEYS and value:
            text = text.replace(value, "***")
    return text


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    key = getattr(e, "full_key", None)
    head = lines[0] if lines else type(e).__name__
    return f"{head} (key: {key})" if key and key not in head else head


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config (or a part of it), with credentials removed."""
    d = asdict(cfg)
    if "storage" in d:
        d["storage"] = {k: v for k, v in d["storage"].items() if k not in ("key", "secret")}
    if "key" in d and "secret" in d:  # a StorageConfig on its own
        d = {k: v for k, v in d.items() if k not in ("key", "secret")}
    return d


def config_hash(part: Any) -> str:
    """Stable short hash of a config (or a part): what changes it changes the hash."""
    plain = part if isinstance(part, dict) else to_dict(part)
    blob = json.dumps(plain, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
