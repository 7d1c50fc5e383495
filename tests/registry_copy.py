"""Copy a registry's rows from one database to another (SQLite to PostgreSQL, in these tests):
fixtures that build a registry once per module on SQLite hand each PostgreSQL test the same
registry this way. The rows are copied as they are (ids included); PostgreSQL's id sequences
are then moved past them, as inserting with explicit ids does not."""

from __future__ import annotations

import sqlalchemy as sa

from kiln.registry import schema


def copy_registry(source_url: str, target_url: str) -> None:
    source, target = sa.create_engine(source_url), sa.create_engine(target_url)
    try:
        with source.connect() as reading, target.begin() as writing:
            schema.metadata.create_all(writing)
            for table in reversed(schema.metadata.sorted_tables):
                writing.execute(table.delete())
            for table in schema.metadata.sorted_tables:
                rows = [dict(row._mapping) for row in reading.execute(sa.select(table))]
                if rows:
                    writing.execute(table.insert(), rows)
            if target.dialect.name == "postgresql":
                for table in schema.metadata.sorted_tables:
                    column = table.autoincrement_column
                    if column is not None:
                        writing.execute(
                            sa.text(
                                f"SELECT setval(pg_get_serial_sequence('{table.name}', "
                                f"'{column.name}'), (SELECT coalesce(max({column.name}), 0) + 1 "
                                f"FROM {table.name}), false)"
                            )
                        )
    finally:
        source.dispose()
        target.dispose()
