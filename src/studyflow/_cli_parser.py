"""The `studyflow` command line's grammar: its commands and their arguments (`cli` runs them)."""

from __future__ import annotations

import argparse


def positive_count(text: str) -> int:
    """A count of workers: a whole number from 1 (else argparse's one-line error)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study file (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study setting (OmegaConf dot-list), repeatable")
    p.add_argument("--config", default=None, help="workflow config with the datasets (config/config.yaml)")
    p.add_argument("--results", default="results", help="results folder")
    p.add_argument("--workers", type=positive_count, default=None, help="local worker processes")
    p.add_argument("--address", default=None, help="attach to this Dask scheduler instead")
    p.add_argument("--log", default=None, help="also log to this file")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="studyflow", description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="stage the data if needed and run a study (no Snakemake)")
    _study_args(run)
    run.add_argument("--dry-run", action="store_true", help="print the resolved study and exit")
    opt = sub.add_parser("optimize", help="run a study on staged data (the optimize rule)")
    _study_args(opt)
    opt.add_argument("--dry-run", action="store_true", help="print the resolved study and exit")
    opt.add_argument("--reference", default=None, help="a matrix problem's reference (JSON): the objective's `reference`")
    st = sub.add_parser("stage", help="stage a dataset to parquet + manifest")
    st.add_argument("dataset")
    st.add_argument("--spec", default=None, help="dataset spec as JSON (else read from --config)")
    st.add_argument("--config", default=None)
    st.add_argument("--out", default="results/data")
    sm = sub.add_parser("summarize", help="compare finished studies")
    sm.add_argument("study_dirs", nargs="+")
    sm.add_argument("--out", default="results/summary")
    sm.add_argument("--index", default=None, help="also write an HTML index of study cards here")
    sm.add_argument("--page", dest="pages", action="append", default=[], metavar="FILE=TITLE",
                    help="another page the index links, e.g. matrix.html=Study matrix")
    mx = sub.add_parser("matrix", help="a study matrix's reference step and comparison (the matrix rules)")
    mx.add_argument("action", choices=["reference", "summary"])
    mx.add_argument("study_dirs", nargs="*", help="summary: the matrix studies' folders")
    mx.add_argument("--problem", default=None, help="reference: the problem")
    mx.add_argument("--spec", default="{}", help="reference: {loader, kwargs} as JSON")
    mx.add_argument("--data", default=None, help="reference: the problem's staged data (parquet)")
    mx.add_argument("--out", default=None, help="reference: the JSON file to write")
    mx.add_argument("--pairs", default="{}", help="summary: {study: [problem, method]} as JSON")
    mx.add_argument("--table", default=None, help="summary: matrix.parquet")
    mx.add_argument("--page", default=None, help="summary: matrix.html")
    rp = sub.add_parser("report", help="write a study's HTML card")
    rp.add_argument("study_dir")
    rp.add_argument("--out", required=True)
    rp.add_argument("--study", default=None, help="study file whose `report:` settings to use")
    rp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pf = sub.add_parser("profile", help="install a Snakemake profile by name")
    pf.add_argument("action", choices=["install"])
    pf.add_argument("name", help="profile name, e.g. slurm")
    pf.add_argument("--profiles", default="profiles", help="this workflow's profiles folder")
    pf.add_argument("--to", default="~/.config/snakemake", help="where Snakemake looks up profiles")
    pf.add_argument("--force", action="store_true")
    cl = sub.add_parser("cluster", help="a cluster several studies share, named by a scheduler file")
    cl.add_argument("action", choices=["up", "status", "down"])
    cl.add_argument("scheduler_file", help="the scheduler file studies attach with")
    cl.add_argument("--from", dest="study_file", default=None,
                    help="start the cluster this study file's `cluster:` and `worker_resources` describe")
    cl.add_argument("--workers", type=positive_count, default=None, help="local worker processes (default: the cores)")
    cl.add_argument("--foreground", action="store_true", help="up: serve in this process until `down`")
    so = sub.add_parser("store", help="the content-addressed trial store")
    so.add_argument("action", choices=["ls", "gc"], help="ls: sizes and counts; gc: drop unreferenced")
    so.add_argument("--results", default="results")
    jo = sub.add_parser("journal", help="check or repair a study journal")
    jo.add_argument("action", choices=["check", "repair"],
                    help="check: list unreadable records; repair: keep the readable prefix (old file to .bak) "
                         "and re-add the finished trials after it from the trial store")
    jo.add_argument("path", help="the journal, e.g. results/.store/journals/<study>-<hash>.log")
    jo.add_argument("--store", default=None,
                    help="repair: the trial store (default: the .store folder the journal lies in)")
    return parser
