"""Only the study's owner gets in, and nothing a user writes reaches a shell unquoted.

Real clusters started by studyflow's `connect()`, real clients without the run's credentials,
real snakemake runs, real job scripts and folders."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from test_workflow import OBJECTIVE
from test_workflow import TINY_STUDY

HOSTILE = "my studies; touch PWNED"  # spaces and a shell command separator


@pytest.mark.slow
def test_a_study_dir_with_spaces_and_a_semicolon_runs_and_runs_nothing_else(tmp_path):
    shutil.copy(REPO / "Snakefile", tmp_path)
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    (tmp_path / "config").mkdir()
    (tmp_path / HOSTILE).mkdir()
    (tmp_path / HOSTILE / "tiny.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    (tmp_path / "tiny.csv").write_text("y\n1\n2\n3\n")
    (tmp_path / "tiny_objective.py").write_text(OBJECTIVE)
    config = {"studies": ["tiny"], "study_dir": HOSTILE, "results": "my results",
              "datasets": {"tiny": {"path": "tiny.csv"}}}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-c2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp_path.rglob("PWNED"))
    assert (tmp_path / "my results" / "studies" / "tiny" / "trials.parquet").is_file()
    assert (tmp_path / "my results" / "reports" / "tiny.html").is_file()


# --- only the study's owner gets in ---------------------------------------------------------

INTRUDER = r'''
import asyncio, ssl, sys
from distributed.core import rpc
from distributed.security import Security

address = sys.argv[1]

async def call(addr, connection_args):
    r = rpc(addr, connection_args=connection_args, timeout=5)
    try:
        return await asyncio.wait_for(r.studyflow_status(study_id="any"), 10)
    finally:
        await r.close_rpc()

# Its own certificates (the server must refuse a peer its CA did not sign), trusting any server
own = Security.temporary().get_connection_args("client")
own["ssl_context"].check_hostname = False
own["ssl_context"].verify_mode = ssl.CERT_NONE
for label, addr, args in (("own-certificates", address, own),
                          ("plain-tcp", address.replace("tls://", "tcp://"), {})):
    try:
        asyncio.run(call(addr, args))
        print(label, "GOT-IN")
    except KeyError:  # the handler answered: no such study
        print(label, "GOT-IN")
    except Exception as exc:
        print(label, "refused", type(exc).__name__)
'''


def _server_client(n_workers=1, cluster=None):
    from studyflow.driver import connect
    from studyflow.server import StudyServer

    context = connect(n_workers, cluster=cluster)
    client = context.__enter__()
    client.register_plugin(StudyServer(), name=StudyServer.name)
    return context, client


def test_a_process_without_the_runs_credentials_cannot_call_the_study_server(tmp_path):
    context, client = _server_client()
    try:
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        script = tmp_path / "intruder.py"
        script.write_text(INTRUDER)
        proc = subprocess.run([sys.executable, str(script), address], capture_output=True, text=True,
                              timeout=120)
        lines = proc.stdout.split("\n")
        assert [line.split()[:2] for line in lines if line] == [["own-certificates", "refused"],
                                                                 ["plain-tcp", "refused"]], proc.stderr[-2000:]
        # the owner's client, from connect(), still gets in: an unknown study is refused in one line
        with pytest.raises(KeyError) as refused:
            client.sync(client.scheduler.studyflow_status, study_id="nobody-opened-this")
        assert str(refused.value) == ("studyflow: no open study 'nobody-opened-this' on this scheduler "
                                      "(never opened here, or closed); refused")
    finally:
        context.__exit__(None, None, None)


def test_tls_false_is_a_plain_tcp_local_cluster_and_gpus_speak_tls():
    from studyflow.config import ClusterConfig
    from studyflow.driver import connect

    with connect(1, cluster=ClusterConfig(tls=False)) as client:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
    with connect(1, cluster=ClusterConfig(gpus=["0"])) as client:
        assert client.scheduler.address.startswith("tls://127.0.0.1:")
        assert client.submit(lambda: 1 + 1).result(timeout=60) == 2


def test_a_spec_whose_journal_lies_outside_the_results_root_is_refused(tmp_path, client4):
    from studyflow.config import load_study
    from studyflow.server import StudyServer
    from studyflow.server import StudySpec

    client4.register_plugin(StudyServer(), name=StudyServer.name)
    cfg = load_study({"name": "s", "objective": "m:f", "search_space": {"x": {"type": "float", "low": 0, "high": 1}}})
    results = tmp_path / "results"
    (results / ".store").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (results / "link").symlink_to(tmp_path / "elsewhere")
    for journal in (tmp_path / "elsewhere" / "j.log", results / ".." / "j.log", results / "link" / "j.log"):
        spec = StudySpec("s-1", cfg, str(journal), str(results / ".store"), "base", 1, 1,
                         results_root=str(results))
        with pytest.raises(Exception) as refused:
            client4.sync(client4.scheduler.studyflow_open, spec=pickle.dumps(spec))
        message = str(refused.value)
        assert "\n" not in message and "journal_path" in message and str(results.resolve()) in message
        assert message.endswith("lies outside the results root " + str(results.resolve()) + "; refused")
    assert not list(tmp_path.rglob("j.log"))


def test_mode_address_attaches_with_the_tls_files_named_in_the_study_file(tmp_path, write_study):
    from studyflow.config import ClusterConfig
    from studyflow.config import load_study
    from studyflow.driver import connect

    with connect(1) as owner:
        security = owner.security
        files = {}
        for key, pem in (("tls_ca_file", security.tls_ca_file), ("tls_cert", security.tls_client_cert),
                         ("tls_key", security.tls_client_key)):
            files[key] = str(tmp_path / f"{key}.pem")
            Path(files[key]).write_text(pem)
        cluster = {"mode": "address", "address": owner.scheduler.address, **files}
        study = write_study(objective="m:f", cluster=cluster)
        cfg = load_study(str(study))
        with connect(cluster=cfg.cluster) as attached:
            assert attached.submit(lambda: 40 + 2).result(timeout=60) == 42
        with pytest.raises(Exception):  # without them, no way in
            with connect(cluster=ClusterConfig(mode="address", address=owner.scheduler.address)):
                pass
    missing = write_study("missing", objective="m:f", cluster={**cluster, "tls_key": str(tmp_path / "nope.pem")})
    with pytest.raises(ValueError, match=r"missing\.yaml: cluster\.tls_key: .*nope\.pem: no such file$"):
        load_study(str(missing))


def test_attaching_to_a_tls_cluster_without_its_files_fails_in_one_line_naming_the_key(tmp_path):
    """`cluster: {mode: address, address: tls://...}` without the TLS files, or with tcp://
    to a cluster that speaks TLS: `studyflow run` printed a 60-line traceback (a TypeError
    about `ssl_context`, or a CommClosedError) naming neither the key nor what to set."""
    from studyflow.driver import connect

    (tmp_path / "sf_obj.py").write_text("def objective(trial):\n    return trial.suggest_float('x', 0, 1)\n")
    with connect(1) as owner:
        tls_address = owner.scheduler.address
        for name, address, words in (("tlsnofiles", tls_address, "tls_ca_file, tls_cert and tls_key"),
                                     ("plaintcp", tls_address.replace("tls://", "tcp://"), "tls://")):
            study = {"objective": "sf_obj:objective", "budget": {"n_trials": 1},
                     "cluster": {"mode": "address", "address": address}}
            (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(study))
            run = subprocess.run([sys.executable, "-m", "studyflow.cli", "run", f"{name}.yaml"], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120)
            assert run.returncode == 1
            lines = run.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
            assert lines[0].startswith(f"studyflow: error: {name}.yaml: cluster.address: ") and words in lines[0], lines


# --- SLURM: job script fields, dashboard, key files -----------------------------------------

@pytest.mark.parametrize("key, value", [("queue", "debug; touch PWNED"), ("account", "lab $(id)"),
                                         ("memory", "2GB\n#SBATCH --uid=0"), ("memory", "2GB\n"), ("walltime", "1:00:00 &"),
                                         ("job_extra_directives", ["--qos=high; touch PWNED"])])
def test_a_job_script_field_a_shell_would_misread_is_refused_in_one_line(write_study, key, value):
    from studyflow.config import ClusterConfig
    from studyflow.config import load_study
    from studyflow.driver._cluster import slurm_job_script
    from studyflow.errors import ConfigError
    from studyflow.errors import StudyflowError

    path = write_study(objective="m:f", cluster={"mode": "slurm", key: value})
    with pytest.raises(ConfigError) as refused:
        load_study(str(path))
    named = f"cluster.{key}" + (".0" if key == "job_extra_directives" else "")
    assert str(refused.value).startswith(f"{path}: {named}: ")
    assert "\n" not in str(refused.value)
    with pytest.raises(StudyflowError, match=f"^{named}: "):  # a ClusterConfig built in Python too
        slurm_job_script(ClusterConfig(mode="slurm", **{key: value}))


def test_the_job_scripts_pythonpath_keeps_spaces_and_semicolons_literal(tmp_path):
    from studyflow.config import ClusterConfig
    from studyflow.driver._cluster import slurm_job_script

    folder = str(tmp_path / HOSTILE)
    script = slurm_job_script(ClusterConfig(mode="slurm", queue="debug"), [folder])
    assert "#SBATCH -p debug" in script
    export = next(line for line in script.splitlines() if line.startswith("export PYTHONPATH="))
    proc = subprocess.run(["bash", "-c", f'{export}\nprintf %s "$PYTHONPATH"'], cwd=tmp_path,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.stdout == folder and not list(tmp_path.rglob("PWNED"))


def test_slurm_keys_are_private_and_removed_and_the_dashboard_is_on_loopback(tmp_path):
    from distributed.security import Security

    from studyflow.config import ClusterConfig
    from studyflow.driver._cluster import slurm_cluster

    tls_dir = tmp_path / ".store" / "tls"
    tls_dir.mkdir(parents=True, mode=0o755)
    tls_dir.chmod(0o755)  # an existing folder others could enter: fixed
    with slurm_cluster(ClusterConfig(mode="slurm"), tls_dir, security=Security.temporary()) as slurm:
        assert (tls_dir.stat().st_mode & 0o777) == 0o700
        keys = [p for p in tls_dir.rglob("*") if p.is_file()]
        assert keys and all((p.stat().st_mode & 0o777) == 0o600 for p in keys)
        assert all((p.parent.stat().st_mode & 0o777) == 0o700 for p in keys)
        assert str(keys[0]) in slurm.job_script()  # what the workers read
        assert slurm.scheduler_address.startswith("tls://")
        hosts = {s.getsockname()[0] for s in slurm.scheduler.http_server._sockets.values()}
        assert hosts == {"127.0.0.1"}  # the dashboard
    assert not [p for p in tls_dir.rglob("*") if p.is_file()]


def test_tls_false_warns_once(caplog):
    from studyflow.config import ClusterConfig
    from studyflow.driver import _security

    _security._warned_plain.discard("slurm")
    with caplog.at_level("WARNING", logger="studyflow.driver._security"):
        for _ in range(3):
            assert _security.run_security(ClusterConfig(mode="slurm", tls=False)) is None
    warned = [r for r in caplog.records if "plain TCP" in r.getMessage()]
    assert len(warned) == 1 and "cluster.tls: false" in warned[0].getMessage()


def test_a_runs_tls_settings_build_each_context_once_and_a_worker_gets_them_without_contexts():
    """distributed builds a TLS context per connection and listener (1-4 ms each, written to
    a temporary folder first); a run's settings keep one per direction and role."""
    from studyflow.driver._security import run_credentials

    security = run_credentials()
    first = security.get_connection_args("worker")
    again = security.get_connection_args("worker")
    assert again["ssl_context"] is first["ssl_context"] and again is not first
    assert security.get_listen_args("worker")["ssl_context"] is not first["ssl_context"]
    received = pickle.loads(pickle.dumps(security))  # what a worker process is handed
    assert received.get_tls_config_for_role("worker") == security.get_tls_config_for_role("worker")
    assert received.get_connection_args("worker")["ssl_context"] is not first["ssl_context"]
