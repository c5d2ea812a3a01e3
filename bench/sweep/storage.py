"""Where a sweep's studies live: a journal file under results/<experiment>/ (several local
processes) or an RDB URL such as postgresql:// (several machines); passwords are masked
wherever a URL is printed.
"""
from __future__ import annotations

import json
from pathlib import Path

from bench.config import ConfigError, Experiment
from bench.store import experiment_dir

HEARTBEAT_S = 60  # RDB workers' heartbeat; a trial silent for 5 heartbeats is failed, re-queued
JOURNAL = "sweep.journal"  # default storage, under results/<experiment>/
RECORD = "sweep.json"  # the storage URL the last sweep used, for report and --best-params


def is_journal(url: str) -> bool:
    return "://" not in url


def storage_url(exp: Experiment, results: Path, given: str | None = None) -> str | None:
    """--storage, else the sweep section's, else the last sweep's; None means the journal file."""
    if given:
        return str(Path(given).resolve()) if is_journal(given) else given
    if exp.sweep and exp.sweep.get("storage"):
        return exp.sweep["storage"]
    try:
        return json.loads((experiment_dir(results, exp.name) / RECORD).read_text()).get("storage")
    except (OSError, ValueError):
        return None


def journal_path(exp: Experiment, results: Path, url: str | None) -> Path | None:
    if url is None:
        return experiment_dir(results, exp.name) / JOURNAL
    return Path(url) if is_journal(url) else None


def describe_storage(exp: Experiment, results: Path, url: str | None) -> str:
    journal = journal_path(exp, results, url)
    return str(journal) if journal is not None else masked(url)


def masked(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def open_storage(exp: Experiment, results: Path, url: str | None, workers: bool = False,
                 heartbeat: int = HEARTBEAT_S):
    """Optuna storage: a journal file (several local processes) or an RDB URL (several machines).

    With `workers`, RDB storages get heartbeats every `heartbeat` seconds: a trial whose worker
    died (on any machine) is failed after 5 missed heartbeats and its parameters re-queued (a
    journal has no heartbeat; see reap_dead_trials).
    """
    from optuna import storages
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    journal = journal_path(exp, results, url)
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal)))
    options = {"engine_kwargs": {"pool_pre_ping": True}} if not url.startswith("sqlite") else {}
    if workers:
        options.update(heartbeat_interval=heartbeat, grace_period=5 * heartbeat)
        if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
            options["heartbeat_stale_trial_callback"] = \
                storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
        else:
            options["failed_trial_callback"] = storages.RetryFailedTrialCallback(max_retry=3)
    try:
        return RDBStorage(url, **options)
    except ImportError as err:
        # SQLAlchemy 2.1 reads postgresql:// as psycopg 3 (postgresql+psycopg2:// is psycopg2)
        hint = ("pip install 'lesa-bench[postgres]' (psycopg 3, which postgresql:// uses)"
                if url.startswith("postgresql") else "install the driver the URL names")
        raise ConfigError(f"--storage {masked(url)}: the database driver is missing ({err}); "
                          f"{hint}") from None
    except Exception as err:  # noqa: BLE001 - sqlalchemy's errors: bad URL, refused, auth
        raise ConfigError(f"--storage {masked(url)}: cannot open it: "
                          f"{type(err).__name__}: {str(err).splitlines()[0]}") from None


def quiet_optuna() -> None:
    import warnings

    import optuna

    # our own per-trial lines replace Optuna's (which print a traceback per failed trial)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_existing(exp: Experiment, results: Path):
    """The storage of the experiment's last sweep, or None when there is none yet."""
    url = storage_url(exp, results)
    journal = journal_path(exp, results, url)
    if journal is not None and not journal.exists():
        return None, url
    quiet_optuna()
    return open_storage(exp, results, url), url


def load_study(storage, name: str):
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _best(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial
        return None
