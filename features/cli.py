"""`fastslow features ...`: apply the feature repository, look features up by hand.

Import-light: Feast is imported inside the commands (importing it takes seconds).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fastslow.settings import Settings

app = typer.Typer(help="The Feast feature store: repository, online lookups.",
                  no_args_is_help=True)

REPO_OPTION = typer.Option(None, "--repo-dir",
                           help="Feature repository folder (default: DATA_DIR/feast).")


def repo_dir_from(settings: Settings, repo_dir: Path | None) -> Path:
    """The repository folder: `repo_dir` if given, else ``<data_dir>/feast``.

    >>> repo_dir_from(Settings(data_dir="/tmp/x"), None)
    PosixPath('/tmp/x/feast')
    """
    return repo_dir or settings.data_dir / "feast"


@app.command("apply")
def apply_command(repo_dir: Path | None = REPO_OPTION) -> None:
    """Write feature_store.yaml from the settings and register the feature definitions."""
    from features.repository import apply_repo

    settings = Settings()
    repo = repo_dir_from(settings, repo_dir)
    apply_repo(repo, settings.feast_online_store, settings.redis_url)
    typer.echo(f"applied feature repository {repo} ({settings.feast_online_store} online store)")


@app.command("lookup")
def lookup_command(user_id: str, item_ids: list[str] = typer.Argument(None),
                   repo_dir: Path | None = REPO_OPTION) -> None:
    """Print the online features of a user and some items as one JSON object."""
    from features.store import FeatureStoreClient

    client = FeatureStoreClient(repo_dir_from(Settings(), repo_dir))
    context = client.lookup(user_id, list(item_ids or []))
    typer.echo(json.dumps({
        "user": {k: _plain(v) for k, v in context.user.items()},
        "items": {k: [_plain(x) for x in v] for k, v in context.items.items()},
        "user_found": context.user_found,
        "items_found": {k: v.tolist() for k, v in context.items_found.items()},
    }))


def _plain(value: object) -> object:
    return value.item() if hasattr(value, "item") else value
