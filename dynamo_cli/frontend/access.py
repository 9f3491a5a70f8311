"""Who may call the frontend: API keys from the environment or files, and how our own processes reach
a frontend that takes keys or serves TLS.

A key is a credential: it is never logged, never shown by `dynamo config show`, never written to the
config file the launcher hands its children (they get it in their environment), and never on a child's
command line.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

from dynamo_cli.config.frontend import ENV_DEFAULT, REDACTED, FrontendConfig
from dynamo_cli.errors import ConfigError

ENV_CHILD = "DYNAMO_FRONTEND_API_KEYS"  # how the launcher hands resolved keys to its children


def _split(text: str) -> list[str]:
    return [k.strip() for k in text.replace(",", "\n").splitlines() if k.strip()]


def resolve_keys(entries: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """The keys the entries name, plus DYNAMO_API_KEY's; a reference that names nothing is an error, so a
    typo never leaves a server open."""
    env = os.environ if environ is None else environ
    keys: list[str] = []
    for entry in entries:
        if entry == REDACTED:
            raise ConfigError(
                "this config's API keys were given as text and are not passed on",
                hint=f"give them here too, in {ENV_DEFAULT} or with --api-key-file",
            )
        if entry.startswith("env:"):
            name = entry[4:]
            if not env.get(name, "").strip():
                raise ConfigError(
                    f"frontend.api_keys names the environment variable {name}, which is not set or empty",
                    hint=f"export {name}=KEY (several: comma-separated)",
                )
            keys += _split(env[name])
        elif entry.startswith("file:"):
            path = Path(entry[5:]).expanduser()
            try:
                found = _split(path.read_text())
            except OSError as e:
                raise ConfigError(
                    f"cannot read the API key file {path} ({e.strerror})", hint="check the path"
                ) from None
            if not found:
                raise ConfigError(f"the API key file {path} holds no key", hint="write one key a line")
            keys += found
        else:
            keys.append(entry)
    keys += _split(env.get(ENV_DEFAULT, ""))
    return list(dict.fromkeys(keys))


def keys_for(cfg: FrontendConfig, environ: dict[str, str] | None = None) -> list[str]:
    """The frontend's keys (resolve_keys), refusing a setting that needs keys when there are none."""
    keys = resolve_keys(cfg.api_keys, environ)
    if cfg.metrics_auth and not keys:
        raise ConfigError(
            "frontend.metrics_auth puts /metrics behind an API key, but no key is configured",
            hint=f"give keys ({ENV_DEFAULT}, --api-key-file or frontend.api_keys), or leave it false",
        )
    return keys


def for_children(keys: list[str]) -> tuple[list[str], dict[str, str]]:
    """What the config file says of the keys (a reference) and the environment that carries them."""
    if not keys:
        return [], {}
    return [f"env:{ENV_CHILD}"], {ENV_CHILD: ",".join(keys)}


def client_options(cfg: FrontendConfig, keys: list[str]) -> dict[str, Any]:
    """httpx.AsyncClient arguments for our own processes (the launcher's health check, the planner's
    scrape) that call a frontend of this deployment: its key, and TLS without checking the server's name
    (it is this deployment's own, reached by an address its certificate may not name). Under mutual TLS
    they present the server's own certificate, which therefore must chain to the client CA too."""
    opts: dict[str, Any] = {}
    if keys:
        opts["headers"] = {"Authorization": f"Bearer {keys[0]}"}
    if cfg.ssl_certfile:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if cfg.ssl_ca_certs:
            ctx.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile)
        opts["verify"] = ctx
    return opts
