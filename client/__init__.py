"""phpo.client: the Python client of phpo and the ``phpo`` command line.

>>> from phpo.client import Client
>>> with Client() as c:           # url/token from PHPO_URL/PHPO_TOKEN or `phpo up`'s config
...     task = c.submit(evaluationExec="python train.py", searchSpace={...})   # doctest: +SKIP
"""

from .client import Client, validate_spec
from .config import ClientConfig, config_path, load_config, save_config
from .errors import (
    APIError,
    AuthError,
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    PhpoError,
    ServerUnreachable,
)
from .sandbox import SandboxTooLarge, build_sandbox, sandbox_files
from .tables import Table

__all__ = [
    "APIError",
    "AuthError",
    "Client",
    "ClientConfig",
    "ConfigError",
    "Conflict",
    "InvalidInput",
    "NotFound",
    "PhpoError",
    "SandboxTooLarge",
    "ServerUnreachable",
    "Table",
    "build_sandbox",
    "config_path",
    "load_config",
    "sandbox_files",
    "save_config",
    "validate_spec",
]
