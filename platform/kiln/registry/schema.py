"""The registry's tables (SQLAlchemy Core) and their forward migrations.

Rows are never updated except `aliases` (a pointer), `rollouts` (a model's canary or shadow
state) and `models.next_version` (a counter); versions, artifacts, alias history and rollout
history are append-only. Version numbers come from
`models.next_version`, never from ``max(version) + 1``, so a deleted number is never reused
and ``digits:5`` means one thing forever.

Schema versions: a fresh database is created at `SCHEMA_VERSION` directly; an older one is
brought forward by the functions in `MIGRATIONS`, each run once, in order, inside the same
write transaction that bumps `schema_version.version`. To change the schema: edit the tables
here, add ``MIGRATIONS[n + 1]`` doing the same to an existing database, bump `SCHEMA_VERSION`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from kiln.errors import RegistryIncompatible
from kiln.registry.records import Lineage

SCHEMA_VERSION = 2


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes, stored naive-UTC (fixed width on SQLite, so they sort)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("registry timestamps must be timezone-aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = sa.MetaData()

# One row. Writers lock it (SELECT ... FOR UPDATE) on databases other than SQLite, where
# BEGIN IMMEDIATE already serialises them; that is what makes version numbers distinct.
schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

models = sa.Table(
    "models",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("next_version", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

versions = sa.Table(
    "versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("dataset", sa.Text),
    sa.Column("data_fingerprint", sa.Text),
    sa.Column("parent_version", sa.Integer),
    sa.Column("run_id", sa.Text),
    sa.Column("git_commit", sa.Text),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("model_id", "version", name="uq_versions_model_version"),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("filename", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("libraries", sa.Text, nullable=False),
    sa.Column("report", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_artifacts_version", "version_id", "kind"),
    sa.Index("ix_artifacts_sha256", "sha256"),
)

aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_aliases_version", "version_id"),
)

# Versions are stored as numbers, not foreign keys: history outlives deleted versions.
alias_history = sa.Table(
    "alias_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("from_version", sa.Integer),
    sa.Column("to_version", sa.Integer, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("gate", sa.Text),
    sa.Column("forced", sa.Boolean, nullable=False),
    sa.Index("ix_alias_history_lookup", "model_id", "alias", "at"),
)

# One row per model that ever had a rollout; servers poll it (primary key lookup by model).
# The second version is named by an alias, not a number, so moving `candidate` during a
# canary moves the canary with it.
rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), primary_key=True),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("percent", sa.Float, nullable=False),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Versions as numbers (what the aliases pointed at when the rollout changed), as in
# alias_history: the record outlives the versions.
rollout_history = sa.Table(
    "rollout_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("percent", sa.Float, nullable=False),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("candidate_version", sa.Integer),
    sa.Column("production_version", sa.Integer),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Index("ix_rollout_history_lookup", "model_id", "at"),
)


def lineage_columns(lineage: Lineage) -> dict[str, Any]:
    """A `Lineage` as `versions` columns."""
    return {
        "dataset": lineage.dataset,
        "data_fingerprint": lineage.data_fingerprint,
        "parent_version": lineage.parent_version,
        "run_id": lineage.run_id,
        "git_commit": lineage.git_commit,
    }


Migration = Callable[[Connection], Any]


def _add_rollouts(conn: Connection) -> None:
    """1 -> 2: canary and shadow state, and its history."""
    rollouts.create(conn)
    rollout_history.create(conn)


# MIGRATIONS[n] takes a database at schema version n - 1 to version n.
MIGRATIONS: dict[int, Migration] = {2: _add_rollouts}


def ensure_schema(conn: Connection) -> int:
    """Create or migrate the schema; call inside a write transaction. Returns the version.

    Raises `RegistryIncompatible` when the database is newer than this code.
    """
    if not sa.inspect(conn).has_table(schema_version.name):
        metadata.create_all(conn)
        conn.execute(schema_version.insert().values(id=1, version=SCHEMA_VERSION))
        return SCHEMA_VERSION
    current = conn.execute(sa.select(schema_version.c.version)).scalar_one()
    if current > SCHEMA_VERSION:
        raise RegistryIncompatible(
            f"the registry database has schema version {current}, newer than this Kiln "
            f"understands ({SCHEMA_VERSION}); upgrade kiln, or point KILN_REGISTRY_URL elsewhere"
        )
    for target in range(current + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[target](conn)
        conn.execute(schema_version.update().values(version=target))
    return SCHEMA_VERSION
