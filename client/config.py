"""Where the client finds its server: arguments, then ``PHPO_URL``/``PHPO_TOKEN``, then the
config file ``$XDG_CONFIG_HOME/phpo/config.toml`` (default ``~/.config/phpo/config.toml``),
which ``phpo up`` writes."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from .errors import ConfigError


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "phpo" / "config.toml"


@dataclass
class ClientConfig:
    url: str | None = None
    token: str | None = None


def load_config(url: str | None = None, token: str | None = None) -> ClientConfig:
    """Resolve url/token; explicit values win over the environment, which wins over the file."""
    # an empty value counts as unset, so `PHPO_URL= phpo ...` falls back to the file
    cfg = ClientConfig(
        url=url or os.environ.get("PHPO_URL") or None, token=token or os.environ.get("PHPO_TOKEN") or None
    )
    path = config_path()
    if (cfg.url is None or cfg.token is None) and path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from None
        cfg.url = cfg.url or data.get("url")
        cfg.token = cfg.token or data.get("token")
    return cfg


def save_config(url: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(tomli_w.dumps({"url": url, "token": token}))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path
