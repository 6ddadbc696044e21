"""``fishtune``: run, resume, status, analyze, compare, ui and dashboard (design.md §1).

Exit status: 0 the study finished; 1 a trial failed or the study could not go on; 2 a user
error (one sentence, no traceback unless ``--debug``, nothing started or written); 130
interrupted, state saved. Ray, Optuna and MLflow are imported only after the spec is valid.
Logging is configured here only (:mod:`study.logs`); a flag left out is taken from the
environment where it has a variable (:mod:`study.environment`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study import exit_codes
from study.cli_parser import command_parser
from study.environment import check_job_paths, ray_address, tracking_uri_override
from study.logs import configure_logging
from study.options import LaunchOptions
from study.spec_core import NAME_PATTERN, Tracking, masked
from study.store import StudyStore
from study.store_check import check_tracking_store
from trainables.schema import ConfigError

if TYPE_CHECKING:  # study.spec builds trial configs and imports torch: `status` and `--help` never load it
    from study.spec import StudySpec


def _tracking_uri(args: argparse.Namespace, name: str | None) -> str:
    """--tracking-uri, else the stored study's, else the default store in the working directory.

    For the commands that only read the store, it must be an MLflow store that exists and
    answers (:mod:`study.store_check`): opening a mistyped path would create an empty database,
    and an unreachable server kept MLflow's client retrying for minutes.
    """
    if args.tracking_uri:
        uri = Tracking(uri=args.tracking_uri).resolved(Path.cwd()).uri
    elif name is not None:
        uri = StudyStore(args.storage, name).tracking_uri()
    else:
        uri = Tracking().resolved(Path.cwd()).uri
    check_tracking_store(uri, reading=True)
    return uri


def parse_command(argv: Sequence[str]) -> argparse.Namespace:
    """A command line parsed, with the flags left out filled from the environment (the Python API)."""
    args = command_parser().parse_args(argv)
    _resolve_environment(args)
    return args


def _resolve_environment(args: argparse.Namespace) -> None:
    """Fill the flags the user left out from the environment (MLFLOW_TRACKING_URI, RAY_ADDRESS)."""
    if hasattr(args, "tracking_uri"):
        args.tracking_uri = tracking_uri_override(args.tracking_uri, os.environ)
    if hasattr(args, "address"):
        args.address = ray_address(args.address, os.environ)


def _check_local_gpu(spec: StudySpec, address: str | None) -> None:
    if address is None and spec.resources.gpu > 0:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"resources.gpu: {spec.resources.gpu} per trial, but this machine has no CUDA device (use --address to run on a cluster)"
            )


def cmd_run(args: argparse.Namespace) -> int:
    return _report(run_outcome(args))


def run_outcome(args: argparse.Namespace) -> exit_codes.Outcome:
    """``fishtune run`` up to its outcome (also the Python API's :func:`fishtune.run`)."""
    from study.spec import load_spec

    overrides: dict[str, Any] = {}
    if args.num_samples is not None:
        overrides["search.num_samples"] = args.num_samples
    if args.tracking_uri:
        overrides["tracking.uri"] = args.tracking_uri
    if args.new_study:
        overrides["name"] = args.new_study
    spec = load_spec(args.spec, overrides)
    args.name = spec.name  # for the interrupt message
    check_job_paths(args.storage, args.tracking_uri, spec, os.environ)
    spec = spec.resolved(Path.cwd())
    _check_local_gpu(spec, args.address)
    store = StudyStore(args.storage, spec.name)
    if store.exists():
        _check_same_study(store.load_spec(), spec)
    from study.launcher import start_launch

    return start_launch(spec, store, _launch_options(args))


def _check_same_study(stored: StudySpec, spec: StudySpec) -> None:
    """Extending a study keeps its definition, its Optuna storage (which holds its trials) and its
    MLflow store (which holds its runs)."""
    if stored.identity() != spec.identity():
        raise ConfigError(
            f"study {spec.name!r} exists with a different search space or trial config; "
            f"keep the spec as it was, or start a new study with --new-study NAME"
        )
    if stored.search.storage != spec.search.storage:
        where = masked(stored.search.storage) if stored.search.storage else "its study folder's optuna.db"
        raise ConfigError(
            f"search.storage: study {spec.name!r} keeps its Optuna trials in {where}; "
            "give the same storage to extend it, or start a new study with --new-study NAME"
        )
    if stored.tracking.uri != spec.tracking.uri:
        raise ConfigError(
            f"tracking.uri: study {spec.name!r} keeps its MLflow runs in {masked(stored.tracking.uri)}; "
            f"a launch writing to {masked(spec.tracking.uri)} would split it between two stores: give the same "
            "--tracking-uri to extend it, or start a new study with --new-study NAME"
        )


def cmd_resume(args: argparse.Namespace) -> int:
    store = StudyStore(args.storage, args.name)
    spec = store.load_spec()
    check_job_paths(args.storage, args.tracking_uri, spec, os.environ)
    if args.tracking_uri:
        spec = dataclasses.replace(spec, tracking=Tracking(uri=args.tracking_uri).resolved(Path.cwd()))
    _check_local_gpu(spec, args.address)
    from study.launcher import resume_launch

    return _report(resume_launch(spec, store, _launch_options(args)))


def _launch_options(args: argparse.Namespace) -> LaunchOptions:
    results = getattr(args, "results", None)
    if results is not None and "://" not in results:  # a folder: absolute, as every node sees it
        results = str(Path(results).expanduser().resolve())
    given = {
        "address": args.address,
        "results": results,
        "mlflow_wait_s": args.mlflow_wait,
        "pending_timeout_s": args.pending_timeout,
    }
    for flag, value in (("--mlflow-wait", args.mlflow_wait), ("--pending-timeout", args.pending_timeout)):
        if value is not None and value < 0:
            raise ConfigError(f"{flag}: expected seconds ≥ 0, got {value:g}")
    return LaunchOptions(**{k: v for k, v in given.items() if v is not None})


def cmd_status(args: argparse.Namespace) -> int:
    uri = _tracking_uri(args, None if args.tracking_uri else args.name)
    from study.status import render, study_table

    print(render(study_table(uri, args.name), args.name, uri, args.format))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from study.dashboard import serve

    serve(StudyStore(args.storage, args.name), args.host, args.port)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    report, out = analyze_report(args)
    print(
        f"study {args.name}: {report['n_trials']} trials, {report['n_used']} completed, excluded {report['excluded']}"
    )
    if "message" in report:
        print(report["message"])
    else:
        from analysis.markdown import headline

        print(headline(report))
    print(f"report: {out / 'report.md'}")
    return 0


def analyze_report(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """``fishtune analyze`` without its printing (the Python API's too): the checks, the report
    written to its folder (returned with it) and the primary test recorded on the parent run."""
    if args.epsilon is not None and not args.epsilon > 0:
        raise ConfigError(f"--epsilon: must be > 0, got {args.epsilon}")
    if not args.smooth_epochs > 0:
        raise ConfigError(f"--smooth-epochs: must be > 0, got {args.smooth_epochs}")
    uri = _tracking_uri(args, None if args.tracking_uri else args.name)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per trial otherwise
    from analysis.markdown import primary_line
    from analysis.mlflow_reader import StudyNotFound
    from analysis.report import analyze
    from study.mlflow_summary import write_primary

    out = Path(args.out) if args.out else Path("reports") / args.name
    try:
        report = analyze(uri, args.name, out, args.epsilon, args.smooth_epochs)
    except (StudyNotFound, LookupError) as exc:
        raise ConfigError(str(exc)) from None
    write_primary(uri, args.name, report["primary"], primary_line(report))
    return report, out


def cmd_compare(args: argparse.Namespace) -> int:
    uri = _tracking_uri(args, None if args.tracking_uri else args.studies[0])
    from analysis.compare import TooFewArms, compare, measurement_warning
    from analysis.mlflow_reader import StudyNotFound

    out = Path(args.out) if args.out else Path("reports") / args.name
    try:
        result = compare(uri, args.studies, out)
    except (StudyNotFound, LookupError, TooFewArms) as exc:
        raise ConfigError(str(exc)) from None
    if warning := measurement_warning(result["measurement_differences"]):
        print(f"fishtune: warning: {warning}", file=sys.stderr)
    for row in result["arms"]:
        chosen = "" if row["coef"] is None else f" (α {row['coef']:.3g} of {row['coefs_tried'] or 1})"
        print(f"{row['arm']}{chosen}: final test accuracy {row['test_mean']:.4f}, n = {row['n']}")
    print(f"comparison: {out / 'compare.md'}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    uri = _tracking_uri(args, args.name)
    server = uri.startswith(("http://", "https://"))  # a tracking server is its own UI: nothing to start
    local = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host  # all interfaces: this machine is one
    base = uri.rstrip("/") if server else f"http://{local}:{args.port}"
    print(f"MLflow UI on {base}" if server else f"MLflow UI for {masked(uri)} on {base}", flush=True)
    if args.name:
        from mlflow.tracking import MlflowClient

        from study.mlflow_study import experiment_url

        exp = MlflowClient(uri).get_experiment_by_name(args.name)
        if exp is None:
            raise ConfigError(f"study {args.name!r}: no such MLflow experiment in {uri}")
        print(f"study {args.name}: {experiment_url(base, exp.experiment_id)}", flush=True)
    if server:
        return 0
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    os.execv(sys.executable, command)
    return 0  # not reached: execv replaces this process


def _report(outcome: exit_codes.Outcome) -> int:
    print(outcome.message, file=sys.stderr if outcome.code else sys.stdout, flush=True)
    return int(outcome.code)


COMMANDS = {
    "run": cmd_run,
    "resume": cmd_resume,
    "status": cmd_status,
    "analyze": cmd_analyze,
    "compare": cmd_compare,
    "ui": cmd_ui,
    "dashboard": cmd_dashboard,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = command_parser().parse_args(argv)
    configure_logging(args.verbosity)
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):  # SIGTERM stops like Ctrl-C: state saved, exit 130
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        if getattr(args, "name", None) and not NAME_PATTERN.fullmatch(args.name):
            raise ConfigError(f"study name {args.name!r}: use lower-case letters, digits, '.', '_' and '-'")
        _resolve_environment(args)
        return COMMANDS[args.command](args)
    except exit_codes.CannotGoOn as exc:
        if args.debug:
            raise
        print(f"fishtune: {exc}", file=sys.stderr)
        return exit_codes.FAILED
    except ConfigError as exc:
        if args.debug:
            raise
        print(f"fishtune: {exc}", file=sys.stderr)
        return exit_codes.USER_ERROR
    except KeyboardInterrupt:
        name = getattr(args, "name", None) or "NAME"
        print(f"fishtune: interrupted; continue with: fishtune resume {name}", file=sys.stderr)
        return exit_codes.INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
