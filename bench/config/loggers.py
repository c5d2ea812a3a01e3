"""`trainer.loggers` and `trainer.mlflow_uri`: which experiment trackers a run logs to.

csv is always on (the resume and the reports read it); tensorboard and mlflow are optional
extras of the distribution. A missing extra is a config error at load time (so `run --dry-run`
says it), not an ImportError an hour into training. Nothing here imports the trackers.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache

LOGGER_NAMES = ("csv", "tensorboard", "mlflow")
# logger -> (the extra to install, the modules it needs); mlflow's local store is SQLite
# (MLflow 3 refuses its file store), which needs SQLAlchemy and Alembic beside mlflow-skinny
EXTRAS = {"tensorboard": ("tensorboard", ("tensorboard",)),
          "mlflow": ("mlflow", ("mlflow", "sqlalchemy", "alembic"))}
REMOTE_SCHEMES = ("http://", "https://", "databricks")  # servers: no local database modules


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
    for name in names:
        missing = missing_modules(name, uri)
        if missing:
            extra = EXTRAS[name][0]
            return (f"trainer.loggers: {name} needs the optional extra '{extra}' (missing: "
                    f"{', '.join(missing)}); install it with pip install -e '.[{extra}]' (or "
                    f"pip install 'lesa-bench[{extra}]'), or remove {name} from trainer.loggers")
    return None
