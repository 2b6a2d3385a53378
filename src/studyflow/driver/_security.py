"""Who may talk to a study's scheduler: only processes holding the run's TLS credentials.

Dask's protocol unpickles what a peer sends, so any process that reaches the scheduler can run
code as the user. studyflow's own clusters (local, one per GPU, SLURM, `cluster up`) therefore
speak TLS with certificates made for the run (`run_credentials()`: the scheduler accepts
only peers whose certificate its own CA signed), unless `cluster.tls: false`. Attaching takes
the cluster's CA and a client certificate and key from the study file, else the credentials a
standing cluster left beside its scheduler file. Key files the SLURM workers read lie in a
folder only this user can enter, and are removed when the cluster closes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from studyflow.errors import StudyflowError

_logger = logging.getLogger(__name__)
_warned_plain: set[str] = set()  # modes already warned about running without TLS
KEY_FILE_PREFIX = ".dask-jobqueue.worker."  # what dask-jobqueue names the key files it writes


def run_security(cfg: Any) -> Any:
    """Certificates made for this run, or None (with one warning per mode) for `tls: false`."""
    if cfg.tls:
        return run_credentials()
    if cfg.mode not in _warned_plain:
        _warned_plain.add(cfg.mode)
        _logger.warning("cluster.tls: false: the %s cluster speaks plain TCP; any process that reaches "
                        "its port can run code as you", cfg.mode)
    return None


def run_credentials() -> Any:
    """A `Security` whose one self-signed certificate every role of the run's cluster shares,
    as distributed's `Security.temporary()` makes, but on a P-256 key: generating its RSA-2048
    key took 20-200 ms of every run's start (a prime search), this one well under 1 ms."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from studyflow._tls import RunSecurity

    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask-internal")])
    now = datetime.datetime.now(tz=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("dask-internal")]), critical=False)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=365))
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return RunSecurity(require_encryption=True, tls_ca_file=cert_pem,
                       **{f"tls_{role}_{part}": pem for role in ("client", "scheduler", "worker")
                          for part, pem in (("key", key_pem), ("cert", cert_pem))})


def credentials_path(scheduler_file: str | Path) -> Path:
    """Where `studyflow cluster up` leaves a client's TLS credentials: beside the scheduler file."""
    return Path(f"{scheduler_file}.tls")


def attach_security(scheduler_file: str | Path | None, cfg: Any = None) -> Any:
    """TLS for attaching: the study file's `tls_ca_file`/`tls_cert`/`tls_key`, else the
    credentials a standing cluster left beside its scheduler file (None: neither)."""
    from distributed.security import Security

    if cfg is not None and cfg.tls_ca_file:
        files = [os.path.expanduser(f) for f in (cfg.tls_ca_file, cfg.tls_cert, cfg.tls_key)]
        return Security(tls_ca_file=files[0], tls_client_cert=files[1], tls_client_key=files[2],
                        require_encryption=True)
    path = credentials_path(scheduler_file) if scheduler_file else None
    if path is None or not path.is_file():
        return None
    return Security(**json.loads(path.read_text()))


def private_dir(path: str | Path) -> Path:
    """`path` as a folder only this user can enter (0700; an existing one is fixed), for key
    files. Refused when another user owns it: they could read or swap what lies there."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = folder.stat()
    if info.st_uid != os.getuid():
        raise StudyflowError(f"{folder}: the TLS key folder belongs to another user (uid {info.st_uid})")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(folder, 0o700)
    return folder


def key_folder(tls_dir: str | Path) -> Path:
    """A new folder for one cluster's key files, 0700 inside the private `tls_dir`: studies
    running side by side each remove only their own."""
    return Path(tempfile.mkdtemp(prefix="run-", dir=private_dir(tls_dir)))


def restrict_key_files(folder: str | Path) -> list[Path]:
    """Make the key files dask-jobqueue wrote in `folder` readable by this user only (0600)."""
    files = sorted(Path(folder).glob(f"{KEY_FILE_PREFIX}*"))
    for file in files:
        os.chmod(file, 0o600)
    return files


def remove_key_folder(folder: str | Path) -> None:
    """Remove one cluster's key files and their folder."""
    shutil.rmtree(folder, ignore_errors=True)
