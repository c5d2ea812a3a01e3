"""`trainer.loggers` and `trainer.mlflow_uri`: which experiment trackers a run logs to.

csv is always on (the resume and the reports read it); tensorboard and mlflow are optional
extras of the distribution. A missing extra, or a tracking URI whose scheme MLflow does not take,
is a config error at load time (so `run --dry-run` says it), not an ImportError or a failed run
an hour into training. Loading imports no tracker; `check_tracking_stores` (the runner calls it
once before the matrix starts) contacts each store the runs log to, with a short timeout.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import socket
import urllib.parse
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

LOGGER_NAMES = ("csv", "tensorboard", "mlflow")
# logger -> (the extra to install, the modules it needs); mlflow's local store is SQLite
# (MLflow 3 refuses its file store), which needs SQLAlchemy and Alembic beside mlflow-skinny
EXTRAS = {"tensorboard": ("tensorboard", ("tensorboard",)),
          "mlflow": ("mlflow", ("mlflow", "sqlalchemy", "alembic"))}
REMOTE_SCHEMES = ("http://", "https://", "databricks")  # servers: no local database modules
# the tracking stores MLflow builds from a URI's scheme (its tracking store registry): a local
# path or file: (its file store), a database through SQLAlchemy (dialect[+driver]), a server
DATABASES = {"sqlite": None, "postgresql": 5432, "mysql": 3306, "mssql": 1433}  # default ports
SERVERS = ("http", "https")
NAMED = ("databricks", "databricks-uc", "uc")  # URIs MLflow takes whole, or as databricks://
SCHEMES = ("", "file", *DATABASES, *SERVERS, *NAMED)
CONTACT_TIMEOUT_S = 5  # the contact before the matrix: a store down fails it now, not each run


@lru_cache(maxsize=None)
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def missing_modules(name: str, mlflow_uri: str | None = None) -> list[str]:
    """The modules logger `name` needs that are not installed."""
    if name not in EXTRAS:
        return []
    needed = EXTRAS[name][1]
    if name == "mlflow" and mlflow_uri and mlflow_uri.startswith(REMOTE_SCHEMES):
        needed = ("mlflow",)
    return [m for m in needed if not _installed(m)]


def logger_error(trainer: dict) -> str | None:
    """Why `trainer.loggers` / `trainer.mlflow_uri` cannot be used, or None."""
    names, uri = trainer.get("loggers"), trainer.get("mlflow_uri")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return (f"trainer.loggers: expected a list of names, got {names!r}; choose from "
                f"{', '.join(LOGGER_NAMES)}")
    for name in names:
        if name not in LOGGER_NAMES:
            return (f"trainer.loggers: {name!r} is not a logger; choose from "
                    f"{', '.join(LOGGER_NAMES)}")
    if len(set(names)) != len(names):
        return f"trainer.loggers: {names!r} names a logger twice"
    if uri is not None and (not isinstance(uri, str) or not uri):
        return (f"trainer.mlflow_uri: expected a tracking URI like http://host:5000 or "
                f"sqlite:///path/mlflow.db, got {uri!r}")
    if uri is not None:
        error = uri_error(uri)
        if error:
            return f"trainer.mlflow_uri: {error}"
    for name in names:
        missing = missing_modules(name, uri)
        if missing:
            extra = EXTRAS[name][0]
            return (f"trainer.loggers: {name} needs the optional extra '{extra}' (missing: "
                    f"{', '.join(missing)}); install it with pip install -e '.[{extra}]' (or "
                    f"pip install 'lesa-bench[{extra}]'), or remove {name} from trainer.loggers")
    return None


def uri_scheme(uri: str) -> str:
    """The scheme MLflow picks a store by: a database's dialect without its +driver, "" for a
    local path, the URI itself for databricks and uc."""
    if uri in NAMED:
        return uri
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter: a local path
        return ""
    dialect, plus, _ = scheme.partition("+")
    return dialect if plus and dialect in DATABASES else scheme


@lru_cache(maxsize=None)
def plugin_schemes() -> tuple[str, ...]:
    """Schemes that installed MLflow plugins add (entry points, read without importing MLflow)."""
    return tuple(sorted(e.name for e in importlib.metadata.entry_points(
        group="mlflow.tracking_store")))


def uri_error(uri: str) -> str | None:
    """Why MLflow would refuse the tracking URI `uri` in every run, or None."""
    from lesa.names import did_you_mean

    scheme = uri_scheme(uri)
    allowed = SCHEMES + plugin_schemes()
    if scheme not in allowed:
        shown = [f"{name}://" for name in (*SERVERS, *DATABASES)] + ["databricks",
                                                                   "a local path"]
        return (f"{uri!r}: MLflow has no tracking store for the scheme {scheme!r}"
                f"{did_you_mean(scheme, [s for s in allowed if s])}; use "
                f"{', '.join(shown)} (e.g. http://host:5000, sqlite:///path/mlflow.db)")
    if scheme in SERVERS and not urllib.parse.urlparse(uri).hostname:
        return f"{uri!r}: names no host; e.g. {scheme}://host:5000"
    return None


def check_tracking_stores(configs: list[dict]) -> None:
    """Contact, once and with a CONTACT_TIMEOUT_S timeout, each MLflow tracking store set by
    trainer.mlflow_uri in these run configs (the default SQLite file in the results folder is
    the suite's own): a server that does not answer, a database not reachable or without its
    driver, a store MLflow refuses raise ConfigError naming the URI, before any run starts.
    Unchecked, each run waited out MLflow's retries (minutes) and then failed."""
    from bench.config import ConfigError

    uris = sorted({c["trainer"]["mlflow_uri"] for c in configs
                   if "mlflow" in (c["trainer"].get("loggers") or [])
                   and c["trainer"].get("mlflow_uri")})
    for uri in uris:
        reason = _contact(uri)
        if reason:
            raise ConfigError(
                f"trainer.mlflow_uri: cannot use the MLflow tracking store {uri} ({reason}; "
                f"contacted once before any run, {CONTACT_TIMEOUT_S} s timeout); start it or fix "
                f"the URI, or remove mlflow from trainer.loggers. No run was started")


def _contact(uri: str) -> str | None:
    """Why the store at `uri` cannot be used now, or None."""
    scheme = uri_scheme(uri)
    if scheme == "sqlite":
        return _sqlite_folder_error(uri)
    if scheme in DATABASES:
        return _database_error(uri, scheme)
    try:  # a server, a plugin's store, a local file store: MLflow's own client, one request
        from mlflow.tracking import MlflowClient

        with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                  MLFLOW_HTTP_REQUEST_TIMEOUT=str(CONTACT_TIMEOUT_S)):
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - whatever MLflow raises, the store is unusable
        return _short(err)
    return None


def _sqlite_folder_error(uri: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        database = make_url(uri).database  # sqlite:///r.db -> r.db, sqlite:////a.db -> /a.db
    except Exception as err:  # noqa: BLE001 - a URI SQLAlchemy cannot read
        return _short(err)
    if not database or database == ":memory:":
        return None
    folder = Path(database).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # MLflow creates the missing folders
    if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        return f"{folder} is not a writable folder for the database file"
    return None


def _database_error(uri: str, scheme: str) -> str | None:
    try:
        import sqlalchemy

        url = sqlalchemy.engine.make_url(uri)
        sqlalchemy.create_engine(url)  # imports the driver; connects to nothing
    except ModuleNotFoundError as err:
        extra = " (pip install -e '.[postgres]')" if scheme == "postgresql" else ""
        return f"its driver {err.name} is not installed{extra}"
    except Exception as err:  # noqa: BLE001 - a URI SQLAlchemy cannot read
        return _short(err)
    if not url.host:  # a local socket: nothing to reach over the network
        return None
    try:
        socket.create_connection((url.host, url.port or DATABASES[scheme]),
                                 timeout=CONTACT_TIMEOUT_S).close()
    except OSError as err:
        return f"{url.host}:{url.port or DATABASES[scheme]}: {err.strerror or err}"
    return None


def _short(err: Exception) -> str:
    """An MLflow error in one line: its cause ("[Errno 111] Connection refused") when it wraps
    one, else its first line."""
    import re

    text = str(err)
    cause = re.findall(r"\[Errno -?\d+\] [^'\")]+", text)
    first = (text.strip().splitlines() or [type(err).__name__])[0]
    return cause[-1].strip() if cause else first[:300]


@contextmanager
def _env(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
