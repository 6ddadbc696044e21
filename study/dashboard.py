"""``fishtune dashboard NAME``: optuna-dashboard (the ``dashboard`` extra) on the study's
persistent Optuna storage, where the searcher records every trial: ``runs/<study>/optuna.db``,
or the database or journal file its spec's ``search.storage`` names."""

from __future__ import annotations

import importlib.util

from study.spec_core import masked, storage_file
from study.store import StudyStore
from trainables.schema import ConfigError

INSTALL_HINT = "pip install 'fishtune[dashboard]'"


def serve(store: StudyStore, host: str, port: int) -> None:
    """Serve until interrupted. A missing extra or SQLite storage is one sentence (exit 2),
    checked before Optuna is imported; opening a mistyped path would create an empty database."""
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise ConfigError(f"fishtune dashboard needs optuna-dashboard, which is not installed: {INSTALL_HINT}")
    url = store.optuna_url
    in_file = storage_file(url)
    if in_file is not None and not in_file[1].is_file():
        raise ConfigError(
            f"study {store.name!r}: no Optuna storage at {in_file[1]}; "
            "run the study first or pass --storage DIR where it was run"
        )
    from optuna_dashboard import run_server

    from study.optuna_storage import open_storage

    print(f"optuna-dashboard for {masked(url)} on http://{host}:{port}", flush=True)
    run_server(open_storage(url), host=host, port=port)  # the storage the searcher writes, of any kind
