"""`studyflow` command line: thin commands over the Python API; one place maps errors to exits."""

from __future__ import annotations

import argparse
import errno
import gc
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from studyflow._cli_parser import build_parser
from studyflow._io import atomic_write
from studyflow._yaml import libyaml_safe_load
from studyflow.errors import StudyflowError

_logger = logging.getLogger("studyflow.cli")


def _setup_logging(log_file: str | None = None) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("studyflow").setLevel(logging.INFO)


def _workflow_config(path: str | None) -> Any:
    """The workflow config (`--config`, else the default file). studyflow.config is imported
    here, not with this module: the workers' forkserver imports this module, and they need none of it."""
    from studyflow.config import WorkflowConfig

    return WorkflowConfig.from_file(path) if path else WorkflowConfig.from_file()


def _warm_workers(study_file: str, objective: str, tables: bool) -> None:
    """Start the local workers' forkserver before this process imports Dask and Optuna, so
    its imports (the objective's module too, and pandas when the study reads a staged table)
    run on another core meanwhile."""
    from studyflow._processes import warm_forkserver

    for path in reversed([str(Path(study_file).resolve().parent), str(Path.cwd())]):
        if path not in sys.path:
            sys.path.insert(0, path)  # where the workers find the objective (worker.search_paths)
    # The command ends in `os._exit`; when workers could not start (their forkserver crashed),
    # multiprocessing's resource tracker, started now with these options, would warn after the
    # command's one-line error about the semaphores of nannies that never ran.
    sys.warnoptions.append("ignore:resource_tracker:UserWarning")
    warm_forkserver([objective.partition(":")[0]], tables=tables)


def cmd_optimize(args: argparse.Namespace, stage_missing: bool, exiting: bool = False) -> int:
    if exiting:
        # This process is the command's alone: collection is off while the config, Dask and
        # Optuna load (many long-lived objects, no garbage worth a collection: a 30-35 ms full
        # one mid-import, on the path to the first trial), then what they made is frozen out
        # of later collections. A run that stops before that ends the process anyway.
        gc.disable()
    from studyflow.config import load_study

    workflow = _workflow_config(args.config)
    cfg = load_study(args.study, args.overrides, defaults=workflow.study_defaults())
    if getattr(args, "reference", None):  # a matrix problem's reference, for every trial
        from studyflow.reference import REFERENCE_ARG
        from studyflow.reference import read_reference

        cfg.objective_args[REFERENCE_ARG] = read_reference(args.reference)
        cfg = load_study(cfg)
    workflow.check_dataset(cfg)
    if not (args.dry_run or args.address) and cfg.cluster.mode == "local":
        _warm_workers(args.study, cfg.objective, tables=cfg.data is not None)
    with libyaml_safe_load():  # Dask's settings: after the forkserver started
        from studyflow.driver import ResultsLayout
        from studyflow.driver import optimize
    if exiting:
        gc.freeze()
        gc.enable()

    if args.dry_run:
        from studyflow.driver import describe
        from studyflow.worker import search_paths

        sys.stdout.write(cfg.to_yaml())
        if args.address:
            cfg.cluster.mode, cfg.cluster.address = "address", args.address
        text = describe(cfg.cluster, args.workers or cfg.concurrency, search_paths(args.study), cfg.worker_resources)
        sys.stdout.write("".join(f"# {line}\n" for line in text.splitlines()))
        return 0
    layout = ResultsLayout(Path(args.results))
    default_log = f"logs/optimize/{cfg.name}.log" if stage_missing else None
    _setup_logging(args.log or default_log)
    if stage_missing and cfg.data is not None:
        from studyflow.stage import stage_if_due

        stage_if_due(cfg.data, workflow.datasets[cfg.data], layout.data(cfg.data))
    result = optimize(
        None, cfg, overrides=None, results_dir=args.results,
        n_workers=args.workers, address=args.address, watch_parent=not stage_missing, exiting=exiting,
    )
    result.write(layout.study_dir(cfg.name))
    _logger.info("wrote %s", layout.study_dir(cfg.name))
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from studyflow.config import dataset_spec
    from studyflow.stage import stage

    _setup_logging()
    if args.spec:
        spec = dataset_spec(args.dataset, json.loads(args.spec), "--spec")
    else:
        spec = _workflow_config(args.config).datasets[args.dataset]
    manifest = stage(args.dataset, spec, args.out)
    _logger.info("staged %s: %d rows, sha256 %s", args.dataset, manifest.rows, manifest.sha256)
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    from studyflow.outputs import summarize
    from studyflow.outputs import write_index
    from studyflow.outputs import write_parquet

    _setup_logging()
    dirs = [Path(d) for d in args.study_dirs]
    studies, params, artifacts = summarize(dirs)
    out = Path(args.out)
    write_parquet(studies, out / "studies.parquet")
    atomic_write(out / "best_params.csv", lambda tmp: params.to_csv(tmp, index=False))
    atomic_write(out / "artifacts.csv", lambda tmp: artifacts.to_csv(tmp, index=False))
    if args.index:
        write_index(dirs, args.index, dict(page.split("=", 1) for page in args.pages))
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    """reference: run a matrix problem's reference loader once; summary: the matrix's table
    and page (outputs/_matrix.py)."""
    _setup_logging()
    if args.action == "reference":
        from studyflow.reference import compute_reference

        compute_reference(args.problem, json.loads(args.spec), args.data, args.out)
        _logger.info("wrote the reference of %s to %s", args.problem, args.out)
        return 0
    from studyflow.outputs import write_matrix

    pairs = {study: tuple(pair) for study, pair in json.loads(args.pairs).items()}
    write_matrix([Path(d) for d in args.study_dirs], pairs, args.table, args.page)  # type: ignore[arg-type]
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from studyflow.outputs import write_report

    from studyflow.config import load_study

    _setup_logging()
    study_file = load_study(args.study, args.overrides) if args.study else None
    write_report(args.study_dir, args.out, study_file)
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    from studyflow.store import TrialStore
    from studyflow.store import gc

    root = Path(args.results) / ".store"
    if not root.is_dir():  # a mistyped --results: gc would make the folder and report nothing removed
        raise StudyflowError(f"{root}: no trial store here; check --results")
    if args.action == "gc":
        removed, freed = gc(root)
        sys.stdout.write(f"removed {removed} entries no journal refers to, freed {freed / 1e6:.1f} MB\n")
        return 0
    store = TrialStore(root)
    keys = store.keys()
    states: dict[str, int] = {}
    for key in keys:
        result = store.get(key)
        state = result.state if result else "incomplete"
        states[state] = states.get(state, 0) + 1
    size = sum(store.size_bytes(k) for k in keys)
    with_artifacts = sum(store.artifacts_dir(k).is_dir() for k in keys)
    journals = sorted((root / "journals").glob("*.log"))
    sys.stdout.write(f"store {root}: {len(keys)} trials, {size / 1e6:.1f} MB, {with_artifacts} with artifacts\n")
    for state, n in sorted(states.items()):
        sys.stdout.write(f"  {state}: {n}\n")
    sys.stdout.write(f"journals: {len(journals)}\n")
    for journal in journals:
        sys.stdout.write(f"  {journal.name}: {journal.stat().st_size / 1e3:.0f} kB\n")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    """A cluster that outlives one study, for several studies to share (driver/_standing.py)."""
    from studyflow.driver import standing

    _setup_logging()
    if args.action == "status":
        sys.stdout.write(json.dumps(standing.status(args.scheduler_file), indent=1) + "\n")
        return 0
    if args.action == "down":
        standing.down(args.scheduler_file)
        sys.stdout.write(f"cluster at {args.scheduler_file} is down\n")
        return 0
    cfg, resources, paths = standing.cluster_of(args.study_file)
    if args.foreground:
        standing.serve(args.scheduler_file, cfg, args.workers, resources, paths)
        return 0
    argv = [args.scheduler_file, *(["--from", args.study_file] if args.study_file else []),
            *(["--workers", str(args.workers)] if args.workers else [])]
    address = standing.up(args.scheduler_file, argv)
    sys.stdout.write(f"cluster up at {address}; studies attach with cluster: {{mode: scheduler_file, "
                     f"scheduler_file: {args.scheduler_file}}}; stop it with `studyflow cluster down "
                     f"{args.scheduler_file}`\n")
    return 0


def cmd_journal(args: argparse.Namespace) -> int:
    """check: list a journal's unreadable records (exit 1 if any); repair: keep the readable
    prefix, after a copy to <path>.bak (under the study's lock, so not while it runs), then
    re-add from the trial store the finished trials the cut records held."""
    from studyflow.driver._lock import StudyLock
    from studyflow.optuna_ext import repair_journal
    from studyflow.optuna_ext import scan_journal
    from studyflow.optuna_ext._journal_recover import describe as describe_recovery
    from studyflow.optuna_ext._journal_recover import recover as recover_trials
    from studyflow.optuna_ext._journal_recover import store_of

    path = Path(args.path)
    if not path.is_file():
        raise StudyflowError(f"{path}: no such journal")
    if args.action == "check":
        found = scan_journal(path)
        sys.stdout.write(f"{path}: {found.records} records read, {len(found.bad)} unreadable\n")
        for bad in found.bad:
            sys.stdout.write(f"  line {bad.line} (byte {bad.offset}): {bad.reason}\n")
        if found.torn_tail:
            sys.stdout.write("  only the last record is torn (a crash mid-write): the next run cuts it\n")
        elif found.bad:
            sys.stdout.write(f"  `studyflow journal repair {path}` keeps the first {found.prefix_records} records\n")
        return 1 if found.bad else 0
    store = Path(args.store) if args.store else store_of(path)
    if store is not None and not (store / "results").is_dir():
        raise StudyflowError(f"{store}: no trial store here (no results/ folder); check --store")
    with StudyLock(path.with_suffix(".lock"), wait_s=0):
        found, backup = repair_journal(path)
        dropped = found.lines - found.prefix_records
        sys.stdout.write(f"{path}: kept the first {found.prefix_records} records ({found.prefix_bytes} bytes), "
                         f"dropped {dropped} lines from line {found.bad[0].line} on; the old file is {backup}\n")
        if store is None:
            sys.stdout.write("no trial store next to it: the trials told after the hole are not re-added "
                             "(--store <results>/.store re-adds the ones it holds)\n")
            return 0
        sys.stdout.write(describe_recovery(recover_trials(path, backup, store)) + "\n")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Copy a profile of this workflow to ~/.config/snakemake/<name>, so that
    `snakemake --profile <name>` finds it by name."""
    import shutil

    source = Path(args.profiles) / args.name
    if not (source / "config.yaml").is_file():
        raise StudyflowError(f"{source}/config.yaml: no such profile")
    target = Path(args.to).expanduser() / args.name
    if target.exists() and not args.force:
        raise StudyflowError(f"{target} exists; pass --force to replace it")
    shutil.copytree(source, target, dirs_exist_ok=True)
    sys.stdout.write(f"installed {source} as {target}: run `snakemake --profile {args.name}`\n")
    return 0


# Errors of the file system, not of studyflow: the file is named in one line, without a traceback.
_FOLDER_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None, exiting: bool = False) -> int:
    """Run one command; `exiting`: the process ends right after (`run`), so a study's local
    cluster is left to end with it (`driver.optimize`'s `exiting`)."""
    args = build_parser(__doc__).parse_args(argv)
    # Snakemake and SLURM stop jobs with SIGTERM: clean up as for Ctrl-C (running trials are
    # marked and re-enqueued in the journal, no output is written).
    signal.signal(signal.SIGTERM, _interrupt)
    # A shell without job control starts background jobs with SIGINT ignored, and Python then
    # keeps ignoring it: make Ctrl-C (SIGINT) always stop the run cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if args.command in ("run", "optimize"):
            return cmd_optimize(args, stage_missing=args.command == "run", exiting=exiting)
        if args.command == "journal":
            return cmd_journal(args)
        commands = {"stage": cmd_stage, "summarize": cmd_summarize, "report": cmd_report, "store": cmd_store,
                    "profile": cmd_profile, "cluster": cmd_cluster, "matrix": cmd_matrix}
        return commands[args.command](args)
    except StudyflowError as exc:  # one line, whatever a library's message quoted in it holds
        sys.stderr.write(f"studyflow: error: {' '.join(str(exc).split())}\n")
        return 1
    except OSError as exc:  # a folder it cannot write (read-only, not the user's, full): one line too
        if exc.filename is None or exc.errno not in _FOLDER_ERRORS:
            raise
        sys.stderr.write(f"studyflow: error: {exc.filename}: {exc.strerror}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("studyflow: interrupted; finished trials are in the journal, rerun to resume\n")
        return 130


def run() -> None:
    """The `studyflow` command: `main`, then exit at once. Everything a command writes is
    closed by then (outputs are written atomically, the journal is closed with the study), so
    the interpreter's teardown (joining Dask's and multiprocessing's threads and helpers, which
    took 0.3-0.8 s after a run) does nothing anyone waits for."""
    code = main(exiting=True)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
