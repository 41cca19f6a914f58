"""Compose a run's configuration from conf/ and command-line style overrides, then validate it.

Flows call :func:`compose` with a list of Hydra override strings
(``["data=synth_easy", "data.synth.seed=3", "train.epochs=5"]``). The composed tree
is merged onto typed dataclass schemas (``infra/schema/``): an unknown key, a value
of the wrong type or a value out of range is a :class:`ConfigError` before any work
starts. Credentials are never accepted from overrides (Prefect records them as flow
parameters) nor from config files: see :data:`HOW_TO_PASS_CREDENTIALS` and
infra/schema/storage.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
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
from infra.schema.evaluate import EvaluateConfig
from infra.schema.model import ModelConfig
from infra.schema.preprocess import PreprocessConfig
from infra.schema.pretrain import PretrainConfig
from infra.schema.segment import SegmentConfig
from infra.schema.storage import CREDENTIAL_FIELDS, StorageConfig
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
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    output: str = "outputs"  # everything a run writes (reports, checkpoints), local or s3://
    seed: int = 0


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


# -- credentials: never through overrides --------------------------------------------------
# Prefect records a flow's overrides in clear, as its parameters (in its database, and on the
# server for deployments). So an override that carries a credential is refused, wherever
# overrides enter: here, before a flow run is created (flows/common.py), and on the Prefect
# server, whose parameter schema for `overrides` carries NO_CREDENTIALS_PATTERN.
HOW_TO_PASS_CREDENTIALS = (
    "Pass S3 credentials instead through (1) the environment of the process that runs the flow: "
    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (and AWS_ENDPOINT_URL for the endpoint); "
    "(2) a Prefect Secret block holding {\"key\": ..., \"secret\": ..., \"token\": ...} (token optional), "
    "named by the override storage.secret_block=<block name>; or (3) for a deployment, the work pool's "
    "job variables env (see prefect.yaml)."
)
_CREDENTIAL_WORDS = ("key", "secret", "token", "password", "passwd", "credential")
_NON_SECRET_STORAGE_FIELDS = ("secret_block",)  # names that merely contain a credential word
assert set(CREDENTIAL_FIELDS) <= set(_CREDENTIAL_WORDS)
_WORD = "(" + "|".join(_CREDENTIAL_WORDS) + ")"
# An override matches this pattern unless it carries a credential: storage.<a credential-like
# field>=... (storage.key, +storage.secret, storage.token, storage.session_token, ...), a storage
# dict naming one (storage={key: ...}), or an endpoint URL with user:password@. Plain regex that
# Python's re and ECMAScript read alike: the flows' parameter schema gives it to every override,
# so the Prefect server refuses such a deployment run before storing it (the server's check is
# case-sensitive, as Hydra keys are; compose()'s is not).
NO_CREDENTIALS_PATTERN = (
    r"^(?!\s*[+~]*\s*storage\s*("
    rf"\.\s*(?!({'|'.join(_NON_SECRET_STORAGE_FIELDS)})\s*=)\w*{_WORD}\w*\s*="
    rf"|=\s*\{{[\s\S]*{_WORD}"
    r"|\.\s*endpoint_url\s*=\s*[^=/@]*://[^/@]*@"
    "))"
)
_ALLOWED = re.compile(NO_CREDENTIALS_PATTERN, re.IGNORECASE)
# Outside storage, a key that looks like a credential (its value is hidden in messages):
# secret, token, password, credential anywhere in its last part, or key alone / as api_key, access_key...
_SECRET_LOOKING_KEY = re.compile(
    r"(^|\.)(\w*(secret|token|password|passwd|credential)\w*|((\w*_)?(access|api|private|secret)_?)?key)$", re.IGNORECASE)


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].strip()


def refused_overrides(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The keys (never the values) of the overrides that carry credentials."""
    return [_key_of(str(o)) for o in overrides if not _ALLOWED.match(str(o))]


def check_overrides(overrides: list[str] | tuple[str, ...] | None) -> None:
    """Refuse credentials given as overrides (ConfigError naming the key and the ways that work)."""
    bad = refused_overrides(list(overrides or []))
    if bad:
        raise ConfigError(
            f"refused override {', '.join(bad)}: credentials cannot be given as overrides, because Prefect "
            f"records a flow's overrides in clear as its parameters. {HOW_TO_PASS_CREDENTIALS}")


def _hides_value(override: str) -> bool:
    key = _key_of(override).lstrip("+~").strip()
    return "=" in override and (not _ALLOWED.match(override) or (
        bool(_SECRET_LOOKING_KEY.search(key)) and key.split(".")[-1] not in _NON_SECRET_STORAGE_FIELDS))


def redact_overrides(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """Overrides fit for logs and reports: the value of anything credential-like replaced by ***."""
    return [f"{o.split('=', 1)[0]}=***" if _hides_value(str(o)) else o for o in overrides]


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> Config:
    """Compose conf/{config_name}.yaml with overrides and return the validated Config.

    Credentials are refused, as overrides and in config files (see HOW_TO_PASS_CREDENTIALS)."""
    overrides = quote_plain_values([str(o) for o in overrides])
    check_overrides(overrides)
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
        cfg = OmegaConf.to_object(merged)  # builds the dataclasses, running their __post_init__ checks
    except OmegaConfBaseException as e:
        raise ConfigError(redact_overrides_in(f"invalid config (overrides {shown}): {_first_line(e)}", overrides)) from None
    except ValueError as e:
        raise ConfigError(redact_overrides_in(f"invalid config (overrides {shown}): {e}", overrides)) from None
    in_files = [f"storage.{f}" for f in CREDENTIAL_FIELDS if getattr(cfg.storage, f) is not None]
    if in_files:
        raise ConfigError(f"{', '.join(in_files)} set in the config files under {CONF_DIR}: credentials never come "
                          f"from the config tree. {HOW_TO_PASS_CREDENTIALS}")
    return cfg


def quote_plain_values(overrides: list[str]) -> list[str]:
    """Overrides as a user types them in a shell, made valid for Hydra's grammar: a ``key=value``
    whose value Hydra cannot read unquoted (a path with spaces, accents, parentheses...) gets
    single quotes around it, so ``segment.video=/videos/ünïcödé name.mp4`` means that file. Values
    Hydra reads as they are (numbers, lists, ``null``, quoted strings) are left alone; a value that
    was not meant as a string then fails as the key's type says, naming the key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and value and value[0] not in "'\"" and not _parses(parser, override):
            # Hydra's quoted strings: backslashes are escaped only before a quote or the end
            escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value).replace("'", "\\'")
            quoted = f"{key}='{escaped}'"
            if _parses(parser, quoted):
                override = quoted
        out.append(override)
    return out


def _parses(parser: Any, override: str) -> bool:
    try:
        parser.parse_override(override)
    except Exception:  # noqa: BLE001 - Hydra's lexer and parser errors alike
        return False
    return True


def redact_overrides_in(text: str, overrides: list[str]) -> str:
    """Remove credential-like values given as overrides from a message (Hydra quotes overrides back)."""
    for o in overrides:
        _, _, value = str(o).partition("=")
        if value.strip() and _hides_value(str(o)):
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
        d["storage"] = {k: v for k, v in d["storage"].items() if k not in CREDENTIAL_FIELDS}
    if isinstance(cfg, StorageConfig):
        d = {k: v for k, v in d.items() if k not in CREDENTIAL_FIELDS}
    return d


def config_hash(part: Any) -> str:
    """Stable short hash of a config (or a part): what changes it changes the hash."""
    plain = part if isinstance(part, dict) else to_dict(part)
    blob = json.dumps(plain, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
