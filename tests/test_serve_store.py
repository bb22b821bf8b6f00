"""The job store on SQLite and on a real PostgreSQL (started here on 127.0.0.1): claims, restarts, append-only audit."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from medlens.serve.store import Store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster listening on 127.0.0.1 only, stopped afterwards."""
    initdb = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
    if initdb is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
    bin_dir = Path(initdb).resolve().parent  # /usr/local/bin may link initdb but not createdb
    root = Path(
        tempfile.mkdtemp(prefix="medlens-pg-")
    )  # not under pytest's 0700 folders: the postgres user must reach it
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "medlens"]),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        _as_postgres(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "log"),
                "-w",
                "start",
                "-o",
                f"-h 127.0.0.1 -p {port} -k {root}",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            _as_postgres([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "medlens", "medlens"]),
            check=True,
            capture_output=True,
        )
        yield f"postgresql+pg8000://medlens@127.0.0.1:{port}/medlens"
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'medlens.db'}"
    url = request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a fresh schema per test
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()
    return url


@pytest.fixture()
def open_store(url: str) -> Iterator[Callable[[str], Store]]:
    """Stores on ``url`` (one per simulated node), closed after the test."""
    made: list[Store] = []

    def make(owner: str) -> Store:
        made.append(Store(url, owner))
        return made[-1]

    yield make
    for store in made:
        store.close()


def test_claims_are_exclusive_and_a_dead_owners_jobs_come_back(open_store: Callable[[str], Store]) -> None:
    store = open_store("node-a")
    study, new = store.add_study("1.2.3", "studies/x", {"modality": "CR"}, 1, "stow")
    again, new_again = store.add_study("1.2.3", "studies/x", {"modality": "CR"}, 1, "stow")
    assert new and not new_again and again == study
    first = store.add_job(study, "pneumonia-28px")
    assert store.add_job(study, "pneumonia-28px") is None  # a study sent twice is processed once
    store.add_job(study, "other", "skipped", "modality CR is not one this model reads (MR)")
    job = store.claim()
    assert job is not None and job.id == first and job.attempts == 1 and job.state == "running"
    assert store.claim() is None  # nothing else is runnable
    restarted = open_store("node-a")  # the same node after a kill -9
    assert restarted.requeue_abandoned() == 1
    job = restarted.claim()
    assert job is not None and job.attempts == 2
    restarted.finish(job.id, "done", {"findings": []}, urgency=0.5)
    assert restarted.counts()["done"] == 1 and restarted.counts()["skipped"] == 1


def test_another_nodes_running_job_is_left_alone_until_its_lease_ends(open_store: Callable[[str], Store]) -> None:
    a, b = open_store("node-a"), open_store("node-b")
    study, _ = a.add_study("1.2.4", "studies/y", {}, 1, "stow")
    a.add_job(study, "pneumonia-28px")
    assert a.claim(lease_seconds=0.2) is not None
    assert b.requeue_abandoned() == 0
    time.sleep(0.3)
    assert b.requeue_abandoned() == 1 and b.claim() is not None


def test_audit_log_is_append_only(open_store: Callable[[str], Store]) -> None:
    store = open_store("node-a")
    store.log("alice", "view", "worklist")
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit")
    assert [e["user"] for e in store.audit_entries()] == ["alice"]
