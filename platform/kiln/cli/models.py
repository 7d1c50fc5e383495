"""`kiln models list|show|history|delete|gc|export|import`: thin over `kiln.registry`.

`kiln gc` is `kiln models gc` under its older name (kept, hidden from the command list).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kiln.cli.output import JsonOption, emit
from kiln.cli.version_tables import (
    artifacts_table,
    number,
    size,
    version_table,
    versions_table,
    when,
)
from kiln.errors import InvalidArgument, InvalidReference
from kiln.registry import AliasMove, Registry, parse_reference
from kiln.settings import Settings

app = typer.Typer(
    help="Inspect and manage registered models, versions and their history.",
    no_args_is_help=True,
)


def open_registry() -> Registry:
    """The registry the environment names (KILN_REGISTRY_URL / KILN_HOME)."""
    import kiln.registry

    return kiln.registry.open(settings=Settings())


def model_name(text: str, command: str) -> str:
    """`text` as a model name, for a command that takes a model rather than one version: a
    reference (digits:3, digits@candidate) is refused saying so, before any work starts."""
    ref = parse_reference(text)
    if ref.version is not None or "@" in text:
        raise InvalidReference(f"{command} takes a model name, not a reference: {ref.name}")
    return ref.name


def moves_table(title: str, moves: list[AliasMove]) -> Table:
    table = Table(title=title)
    for column in ("time (UTC)", "alias", "move", "action"):
        table.add_column(column, no_wrap=True)
    for column in ("actor", "gates", "reason"):
        table.add_column(column, overflow="fold")
    for m in moves:
        if m.gate is None or not m.gate.results:
            gates = "-"
        elif m.gate.passed:
            gates = "[green]pass[/]"
        else:
            gates = "[bold yellow]FAIL, forced[/]" if m.forced else "[red]FAIL[/]"
        origin = "-" if m.from_version is None else str(m.from_version)
        table.add_row(
            when(m.at),
            m.alias,
            f"{origin} → {m.to_version}",
            m.action,
            m.actor,
            gates,
            m.reason or "-",
        )
    return table


@app.command("list")
def list_models(as_json: bool = JsonOption) -> None:
    """List registered models with their version counts and aliases."""
    with open_registry() as registry:
        found = registry.list_models()

    def render(console: Console) -> None:
        if not found:
            console.print("no models registered yet; register one with kiln train --name NAME")
            return
        table = Table(title="models")
        for column in ("name", "versions", "latest", "aliases", "created"):
            table.add_column(column, overflow="fold")
        for m in found:
            aliases = ", ".join(f"{a} → {v}" for a, v in m.aliases.items()) or "-"
            table.add_row(
                m.name, str(m.version_count), number(m.latest_version), aliases, when(m.created_at)
            )
        console.print(table)

    emit({"models": [m.to_dict() for m in found]}, as_json, render)


@app.command("show")
def show(
    target: Annotated[
        str, typer.Argument(metavar="NAME|REF", help="A model name, or a reference (digits:3).")
    ],
    limit: Annotated[
        int, typer.Option(help="Show the newest N versions of a model; 0 shows all.")
    ] = 20,
    as_json: bool = JsonOption,
) -> None:
    """Show a model's versions (metrics, artifacts, aliases), or one version in full."""
    if limit < 0:
        raise InvalidArgument(f"--limit must be 0 (all) or positive, got {limit}")
    if ":" in target or "@" in target:
        _show_version(target, as_json)
        return
    ref = parse_reference(target)
    with open_registry() as registry:
        summary = registry.get_model(ref.name)
        aliases = summary.aliases
        shown = registry.list_versions(ref.name, limit=limit or None)
        if limit:
            artifacts = {v.version: registry.artifacts(ref.name, v.version) for v in shown}
        else:
            artifacts = registry.model_artifacts(ref.name)
        rollout = registry.rollout(ref.name)
    total = summary.version_count
    by_version: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    payload = {
        "name": ref.name,
        "aliases": aliases,
        "rollout": rollout.to_dict(),
        "version_count": total,
        "versions": [
            {
                **v.to_dict(),
                "aliases": by_version.get(v.version, []),
                "artifacts": [a.to_dict() for a in artifacts.get(v.version, [])],
            }
            for v in shown
        ],
    }

    def render(console: Console) -> None:
        title = f"{ref.name}: {total} versions"
        table = versions_table(title, shown, artifacts, by_version)
        console.print(table)
        if len(shown) < total:
            console.print(f"{total - len(shown)} older versions not shown (--limit 0 shows all)")
        if not aliases:
            console.print(f"no aliases yet: kiln promote {ref.name}:VERSION")
        if rollout.active:
            console.print(f"rollout: [bold]{rollout.describe()}[/] (kiln rollout {ref.name})")

    emit(payload, as_json, render)


def _show_version(target: str, as_json: bool) -> None:
    with open_registry() as registry:
        version = registry.resolve(target)
        found = registry.artifacts(version.name, version.version)
        aliases = [a for a, v in registry.aliases(version.name).items() if v == version.version]
    payload = {
        **version.to_dict(),
        "aliases": aliases,
        "artifacts": [a.to_dict() for a in found],
    }

    def render(console: Console) -> None:
        console.print(version_table(version, aliases))
        console.print(artifacts_table(found))

    emit(payload, as_json, render)


@app.command("history")
def history(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A model name.")],
    alias: Annotated[str | None, typer.Option(help="Only this alias's moves.")] = None,
    at: Annotated[
        str | None,
        typer.Option(
            help="Also say which version the alias pointed at at this time "
            "(ISO 8601; without an offset it is UTC), e.g. 2026-11-23T14:02.",
        ),
    ] = None,
    as_json: bool = JsonOption,
) -> None:
    """Every move of a model's aliases: from, to, when, who, why and the gate decision."""
    name = model_name(name, "kiln models history")
    instant = None if at is None else _parse_time(at)
    if instant is not None and alias is None:
        alias = "production"
    with open_registry() as registry:
        moves = registry.history(name, alias)
        served = None
        if instant is not None and alias is not None:
            served = registry.alias_at(name, alias, instant)
    payload: dict[str, Any] = {
        "name": name,
        "alias": alias,
        "moves": [m.to_dict() for m in moves],
    }
    if instant is not None:
        payload["at"] = {"time": instant.isoformat(), "version": served}

    def render(console: Console) -> None:
        if not moves:
            console.print(f"no alias moves for {name} yet: kiln promote {name}:VERSION")
        else:
            title = f"{name}@{alias} history" if alias else f"{name} alias history"
            console.print(moves_table(title, moves))
        if instant is not None:
            pointed = "nothing" if served is None else f"{name}:{served}"
            console.print(f"at {when(instant)} UTC, {name}@{alias} pointed at [bold]{pointed}[/]")

    emit(payload, as_json, render)


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(
            f"--at '{text}' is not an ISO 8601 time; e.g. 2026-11-23T14:02 or "
            "2026-11-23T14:02:00+01:00"
        ) from None
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise InvalidArgument(
            f"--at '{text}' is out of range: in UTC it falls outside the years 1 to 9999"
        ) from None
    return value


@app.command("delete")
def delete(
    ref: Annotated[str, typer.Argument(metavar="NAME:VERSION", help="The version to delete.")],
    as_json: bool = JsonOption,
) -> None:
    """Delete a version (refused while an alias points at it). Run `kiln models gc` to free
    space."""
    parsed = parse_reference(ref)
    if parsed.version is None:
        raise InvalidReference(
            f"delete takes NAME:VERSION (e.g. {parsed.name}:3), not '{ref}': "
            "aliases are moved with kiln promote / kiln rollback, never deleted by reference"
        )
    with open_registry() as registry:
        deleted = registry.delete_version(parsed.name, parsed.version)

    def render(console: Console) -> None:
        console.print(f"deleted {deleted.ref}; kiln models gc frees blobs no version uses any more")

    emit({"deleted": deleted.to_dict()}, as_json, render)


@app.command("gc")
def gc(
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="List what would be deleted, and its size; delete nothing."),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            "-y",
            help="Delete even when that is more than half of the stored blobs (or all of them).",
        ),
    ] = False,
    as_json: bool = JsonOption,
) -> None:
    """Delete artifact blobs no version references, temporary files of dead writers, and
    run folders of killed trainings.

    Refuses, deleting nothing, when more than half of the stored blobs would go (all of them
    when the registry references none, as a replaced or re-created registry.db does) unless
    --yes; refuses a damaged registry database always. `kiln gc` is the same command.
    """
    from kiln.cli.train import unfinished_runs

    settings = Settings()
    with open_registry() as registry:
        report = registry.gc(dry_run=dry_run, force=yes)
    runs = unfinished_runs(settings.runs_dir)
    removed_runs = []
    for run in runs:
        if not dry_run:
            shutil.rmtree(run.path, ignore_errors=True)
            if run.path.exists():
                continue
        removed_runs.append(run)
    run_bytes = sum(r.bytes for r in removed_runs)
    payload = report.to_dict() | {
        "removed_runs": [r.path.name for r in removed_runs],
        "freed_bytes": report.freed_bytes + run_bytes,
        "entries": [e.to_dict() for e in report.entries]
        + [
            {"kind": "run", "name": r.path.name, "bytes": r.bytes, "reason": r.reason}
            for r in removed_runs
        ],
    }

    def render(console: Console) -> None:
        verb = "would remove" if dry_run else "removed"
        if dry_run and payload["entries"]:
            table = Table(title="kiln models gc --dry-run: nothing was deleted")
            for column in ("kind", "name", "size"):
                table.add_column(column, overflow="fold")
            for entry in payload["entries"]:
                table.add_row(entry["kind"], entry["name"], size(entry["bytes"]))
            console.print(table)
        console.print(
            f"{verb} {len(report.removed_blobs)} unreferenced blobs, "
            f"{len(report.removed_temp_files)} stale temporary files and "
            f"{len(removed_runs)} unfinished run folders ({size(payload['freed_bytes'])}); "
            f"kept {report.kept_blobs} blobs"
        )
        if dry_run and report.confirmation:
            console.print(f"kiln models gc would refuse without --yes: {report.confirmation}")

    emit(payload, as_json, render)


@app.command("export")
def export(
    ref: Annotated[
        str,
        typer.Argument(metavar="REF", help="The version: digits:3, digits@production, digits."),
    ],
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="Bundle to write (.tar, or .tar.gz to compress)."),
    ],
    as_json: bool = JsonOption,
) -> None:
    """Write one version with all its artifacts to a self-contained bundle file."""
    with open_registry() as registry:
        manifest = registry.export_version(ref, file)
    written = file.stat().st_size
    payload = {
        "file": str(file),
        "ref": manifest.version.ref,
        "artifacts": [a.to_dict() for a in manifest.artifacts],
        "bytes": written,
    }

    def render(console: Console) -> None:
        console.print(
            f"exported {manifest.version.ref} ({len(manifest.artifacts)} artifacts, "
            f"{size(written)}) to {file}"
        )

    emit(payload, as_json, render)


@app.command("import")
def import_(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="A bundle written by kiln models export.")
    ],
    as_json: bool = JsonOption,
) -> None:
    """Import a version from a bundle, checking every artifact's sha256."""
    with open_registry() as registry:
        result = registry.import_bundle(file)

    def render(console: Console) -> None:
        ref = result.version.ref
        if not result.created:
            console.print(f"{ref} is already in this registry; nothing new imported")
        elif ref != result.source_ref:
            console.print(f"imported {result.source_ref} as [bold]{ref}[/] (that number is taken)")
        else:
            console.print(f"imported [bold]{ref}[/] ({len(result.artifacts)} artifacts)")

    emit(result.to_dict(), as_json, render)
