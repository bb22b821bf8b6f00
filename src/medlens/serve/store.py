"""The service's persistent state: studies, jobs, radiologists' reads and an append-only audit log.

SQLAlchemy Core over SQLite (one file, the default) or PostgreSQL (a URL).
Every received study is written here before the upload is acknowledged, so a
crash loses nothing; a job is *claimed* by an atomic conditional update, and a
job left ``running`` by a killed process is queued again when its owner
restarts (or when its lease runs out), so every study is processed exactly
once to completion. Results are written under deterministic DICOM UIDs, so a
job redone after a crash replaces its own output instead of duplicating it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from medlens.errors import ConfigError
from medlens.phi import redact

NOT_ASSESSED = "not-assessed"  # every image outside what the model was trained on: no finding is given
JOB_STATES = ("queued", "running", "done", "referred", NOT_ASSESSED, "failed", "skipped")
FINISHED = ("done", "referred", NOT_ASSESSED, "failed", "skipped")

metadata = sa.MetaData()

studies = sa.Table(
    "studies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_uid", sa.String(64), nullable=False, unique=True),
    sa.Column("folder", sa.Text, nullable=False),  # relative to the service's storage folder
    sa.Column("modality", sa.String(16)),
    sa.Column("body_part", sa.String(64)),
    sa.Column("description", sa.Text),
    sa.Column("n_instances", sa.Integer, nullable=False, default=0),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("urgency", sa.Float, nullable=False, default=0.0),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False, default=0.0),
    sa.Column("owner", sa.String(128)),
    sa.Column("lease_until", sa.Float),
    sa.Column("reason", sa.Text),  # why skipped / failed
    sa.Column("result", sa.Text),  # JSON
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column(
        "version", sa.Integer, nullable=False, default=1, server_default="1"
    ),  # +1 each time late instances re-open it
    sa.UniqueConstraint("study_id", "model", name="one_job_per_study_and_model"),
)

reads = sa.Table(
    "reads",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("reader", sa.String(128), nullable=False),
    sa.Column("finding", sa.String(128), nullable=False),
    sa.Column("present", sa.Boolean, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.UniqueConstraint("job_id", "reader", "finding", name="one_read_per_reader_and_finding"),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("user", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.Text, nullable=False),
)

observations = sa.Table(
    "observations",
    metadata,
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("model", sa.String(128), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("data", sa.Text, nullable=False),  # JSON: input_mean, probabilities, embedding
)

settings = sa.Table(
    "settings", metadata, sa.Column("key", sa.String(64), primary_key=True), sa.Column("value", sa.Text, nullable=False)
)

_APPEND_ONLY = {
    "sqlite": [
        "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
        "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION medlens_audit_append_only() RETURNS trigger AS $$ "
        "BEGIN RAISE EXCEPTION 'audit log is append-only'; END; $$ LANGUAGE plpgsql",
        "DROP TRIGGER IF EXISTS audit_append_only ON audit",
        "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit FOR EACH ROW EXECUTE FUNCTION medlens_audit_append_only()",
    ],
}


@dataclass(frozen=True)
class Job:
    id: int
    study_id: int
    model: str
    state: str
    attempts: int
    urgency: float
    result: dict[str, Any] | None
    reason: str | None
    version: int = 1


class Store:
    """All database access of the service; one instance per process (connections are pooled)."""

    def __init__(self, url: str, owner: str) -> None:
        try:
            self.engine: Engine = sa.create_engine(url, future=True, **_engine_options(url))
        except (sa.exc.ArgumentError, ModuleNotFoundError) as exc:
            raise ConfigError(
                f"--db {_redact(url)}: not a database URL SQLAlchemy can open ({exc}); "
                "use sqlite:///path/medlens.db or postgresql+pg8000://user@host/db"
            ) from exc
        self.owner = owner
        metadata.create_all(self.engine)
        _add_missing_columns(self.engine)
        with self.engine.begin() as conn:
            for statement in _APPEND_ONLY.get(self.engine.dialect.name, []):
                conn.exec_driver_sql(statement)

    def close(self) -> None:
        """Close the pooled connections (at shutdown)."""
        self.engine.dispose()

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # studies and jobs ------------------------------------------------------------------------
    def add_study(
        self, study_uid: str, folder: str, info: dict[str, Any], n_instances: int, source: str
    ) -> tuple[int, bool]:
        """Record a study (or count more instances of one already known); returns (id, new)."""
        with self.connect() as conn:
            row = conn.execute(sa.select(studies.c.id).where(studies.c.study_uid == study_uid)).first()
            if row is not None:
                conn.execute(
                    studies.update()
                    .where(studies.c.id == row.id)
                    .values(n_instances=studies.c.n_instances + n_instances)
                )
                return row.id, False
            result = conn.execute(
                studies.insert().values(
                    study_uid=study_uid,
                    folder=folder,
                    modality=info.get("modality"),
                    body_part=info.get("body_part"),
                    description=redact(info.get("description") or ""),
                    n_instances=n_instances,
                    source=source,
                    received_at=time.time(),
                )
            )
            return int(result.inserted_primary_key[0]), True

    def add_job(
        self, study_id: int, model: str, state: str = "queued", reason: str | None = None, delay_seconds: float = 0.0
    ) -> int | None:
        """A job for (study, model) unless there is one already (a study sent twice is processed once)."""
        with self.connect() as conn:
            exists = conn.execute(
                sa.select(jobs.c.id).where(jobs.c.study_id == study_id, jobs.c.model == model)
            ).first()
            if exists is not None:
                return None
            now = time.time()
            result = conn.execute(
                jobs.insert().values(
                    study_id=study_id,
                    model=model,
                    state=state,
                    reason=redact(reason) if reason else None,
                    created_at=now,
                    next_attempt_at=now + delay_seconds,
                    finished_at=now if state in FINISHED else None,
                )
            )
            return int(result.inserted_primary_key[0])

    def postpone_queued(self, study_id: int, delay_seconds: float) -> None:
        """A study still receiving instances: its queued jobs wait ``delay_seconds`` more."""
        with self.connect() as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.study_id == study_id, jobs.c.state == "queued", jobs.c.attempts == 0)
                .values(next_attempt_at=time.time() + delay_seconds)
            )

    def reopen(self, study_id: int, delay_seconds: float, models: list[str]) -> int:
        """New instances of a study: the finished jobs of ``models`` run again over all instances, as a new version.

        A job running now is marked too (its version moves on), so it is queued again when it finishes.
        Skipped jobs stay skipped (routing looks at the study, which one more instance does not change).
        """
        now = time.time()
        with self.connect() as conn:
            ours = sa.and_(jobs.c.study_id == study_id, jobs.c.model.in_(models))
            reopened = conn.execute(
                jobs.update()
                .where(ours, jobs.c.state.in_(("done", "referred", NOT_ASSESSED, "failed")))
                .values(
                    state="queued",
                    attempts=0,
                    version=jobs.c.version + 1,
                    next_attempt_at=now + delay_seconds,
                    finished_at=None,
                    reason=None,
                )
            ).rowcount
            conn.execute(jobs.update().where(ours, jobs.c.state == "running").values(version=jobs.c.version + 1))
            return reopened

    def requeue_abandoned(self, max_attempts: int | None = None) -> int:
        """Jobs this owner was running when it died, and jobs whose lease ran out, go back to the queue.

        A job that has already used ``max_attempts`` fails for good instead: if it took the service down each
        time (a file that crashes a decoder), queueing it again would crash-loop the service.
        """
        now = time.time()
        abandoned = sa.and_(jobs.c.state == "running", sa.or_(jobs.c.owner == self.owner, jobs.c.lease_until < now))
        with self.connect() as conn:
            if max_attempts is not None:
                conn.execute(
                    jobs.update()
                    .where(abandoned, jobs.c.attempts >= max_attempts)
                    .values(
                        state="failed",
                        owner=None,
                        lease_until=None,
                        finished_at=now,
                        reason=f"gave up after {max_attempts} attempts: the service stopped while running this job each time "
                        "(a file may crash a decoder); check the study's images",
                    )
                )
            result = conn.execute(jobs.update().where(abandoned).values(state="queued", owner=None, lease_until=None))
            return result.rowcount

    def claim(self, lease_seconds: float = 600.0) -> Job | None:
        """Atomically take the most urgent runnable job (oldest first among equals), or None."""
        now = time.time()
        with self.connect() as conn:
            for _ in range(5):  # another worker may win the race for a row; try the next one
                query = (
                    sa.select(jobs.c.id)
                    .where(jobs.c.state == "queued", jobs.c.next_attempt_at <= now)
                    .order_by(jobs.c.id)
                    .limit(1)
                )
                if self.engine.dialect.name == "postgresql":
                    query = query.with_for_update(skip_locked=True)
                row = conn.execute(query).first()
                if row is None:
                    return None
                taken = conn.execute(
                    jobs.update()
                    .where(jobs.c.id == row.id, jobs.c.state == "queued")
                    .values(
                        state="running", owner=self.owner, lease_until=now + lease_seconds, attempts=jobs.c.attempts + 1
                    )
                )
                if taken.rowcount == 1:
                    return _job(conn.execute(sa.select(jobs).where(jobs.c.id == row.id)).one())
        return None

    def finish(
        self,
        job_id: int,
        state: str,
        result: dict[str, Any] | None,
        urgency: float = 0.0,
        reason: str | None = None,
        version: int | None = None,
    ) -> bool:
        """Record a job's outcome; False (and the job queued again) when instances arrived after it was claimed."""
        with self.connect() as conn:
            where = [jobs.c.id == job_id] + ([jobs.c.version == version] if version is not None else [])
            done = conn.execute(
                jobs.update()
                .where(*where)
                .values(
                    state=state,
                    result=json.dumps(result) if result is not None else None,
                    urgency=urgency,
                    reason=redact(reason) if reason else None,
                    owner=None,
                    lease_until=None,
                    finished_at=time.time(),
                )
            ).rowcount
            if done == 0:
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id)
                    .values(state="queued", attempts=0, owner=None, lease_until=None, next_attempt_at=time.time())
                )
            return done == 1

    def retry_later(self, job_id: int, reason: str, delay_seconds: float) -> None:
        with self.connect() as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(
                    state="queued",
                    reason=redact(reason),
                    owner=None,
                    lease_until=None,
                    next_attempt_at=time.time() + delay_seconds,
                )
            )

    def job(self, job_id: int) -> Job | None:
        with self.connect() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return _job(row) if row is not None else None

    def study(self, study_id: int) -> dict[str, Any]:
        with self.connect() as conn:
            return dict(conn.execute(sa.select(studies).where(studies.c.id == study_id)).one()._mapping)

    def worklist(self, limit: int = 500) -> list[dict[str, Any]]:
        """Every job with its study, most urgent first: referred and finished by urgency, then the queue."""
        order = sa.case(
            (jobs.c.state == "referred", 0),
            (jobs.c.state == "done", 1),
            (jobs.c.state == NOT_ASSESSED, 2),
            (jobs.c.state == "failed", 2),
            (jobs.c.state.in_(("running", "queued")), 3),
            else_=4,
        )
        query = (
            sa.select(jobs, studies.c.study_uid, studies.c.modality, studies.c.received_at)
            .join(studies, studies.c.id == jobs.c.study_id)
            .order_by(order, jobs.c.urgency.desc(), jobs.c.id)
            .limit(limit)
        )
        with self.connect() as conn:
            return [_row_dict(r) for r in conn.execute(query)]

    def counts(self) -> dict[str, int]:
        with self.connect() as conn:
            rows = conn.execute(sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)).all()
        return {state: 0 for state in JOB_STATES} | {state: int(n) for state, n in rows}

    def add_observation(self, job_id: int, model: str, data: dict[str, Any]) -> None:
        """What a finished job saw and said, for drift monitoring (a redone job replaces its observation)."""
        with self.connect() as conn:
            conn.execute(observations.delete().where(observations.c.job_id == job_id))
            conn.execute(
                observations.insert().values(job_id=job_id, model=model, at=time.time(), data=json.dumps(data))
            )

    def observations(self, model: str) -> list[dict[str, Any]]:
        """A model's observations in the order the jobs finished."""
        query = (
            sa.select(observations)
            .where(observations.c.model == model)
            .order_by(observations.c.at, observations.c.job_id)
        )
        with self.connect() as conn:
            return [{"job_id": r.job_id, "at": r.at, **json.loads(r.data)} for r in conn.execute(query)]

    def get_setting(self, key: str, default: str) -> str:
        with self.connect() as conn:
            row = conn.execute(sa.select(settings.c.value).where(settings.c.key == key)).first()
        return row.value if row is not None else default

    def set_setting(self, key: str, value: str) -> None:
        with self.connect() as conn:
            if conn.execute(settings.update().where(settings.c.key == key).values(value=value)).rowcount == 0:
                conn.execute(settings.insert().values(key=key, value=value))

    # reads and audit -------------------------------------------------------------------------
    def record_read(self, job_id: int, reader: str, finding: str, present: bool) -> None:
        """A radiologist's read of one finding; a later read by the same reader replaces the earlier one."""
        with self.connect() as conn:
            conn.execute(
                reads.delete().where(reads.c.job_id == job_id, reads.c.reader == reader, reads.c.finding == finding)
            )
            conn.execute(
                reads.insert().values(job_id=job_id, reader=reader, finding=finding, present=present, at=time.time())
            )

    def reads_with_results(self) -> list[dict[str, Any]]:
        query = sa.select(reads, jobs.c.model, jobs.c.result, jobs.c.study_id).join(jobs, jobs.c.id == reads.c.job_id)
        with self.connect() as conn:
            return [_row_dict(r) for r in conn.execute(query)]

    def log(self, user: str, action: str, target: str) -> None:
        with self.connect() as conn:
            conn.execute(audit.insert().values(at=time.time(), user=user, action=action, target=target))

    def audit_entries(self, limit: int = 1000) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(audit).order_by(audit.c.id.desc()).limit(limit))]


def _add_missing_columns(engine: Engine) -> None:
    """A database made by an earlier medlens gets the columns added since (nothing else changes)."""
    present = {c["name"] for c in sa.inspect(engine).get_columns("jobs")}
    if "version" not in present:
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE jobs ADD COLUMN version INTEGER NOT NULL DEFAULT 1")


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"check_same_thread": False, "timeout": 30}}
    return {"pool_pre_ping": True}


def _redact(url: str) -> str:
    """A database URL without its password, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable URL>"


def _job(row: Any) -> Job:
    return Job(
        row.id,
        row.study_id,
        row.model,
        row.state,
        row.attempts,
        row.urgency,
        json.loads(row.result) if row.result else None,
        row.reason,
        row.version,
    )


def _row_dict(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    if out.get("result"):
        out["result"] = json.loads(out["result"])
    return out
