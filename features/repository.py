"""The feature repository on disk: render its `feature_store.yaml`, apply the definitions.

A repository directory (by default ``<data_dir>/feast``) holds the rendered
`feature_store.yaml`, the file registry, the sqlite online store (unless Redis is configured)
and the parquet offline store (one dataset folder per feature view under ``offline/``).
Rendering is plain text; only `apply_repo` and `open_store` import Feast.

>>> import tempfile
>>> repo = write_repo_config(tempfile.mkdtemp(), online_store="redis",
...                          redis_url="redis://127.0.0.1:6390/2")
>>> print((repo / "feature_store.yaml").read_text())  # doctest: +ELLIPSIS
# Rendered by ...
project: fastslow
provider: local
registry: registry.db
online_store:
  type: redis
  connection_string: "127.0.0.1:6390,db=2"
offline_store:
  type: file
entity_key_serialization_version: 3
"""

from __future__ import annotations

import logging
import string
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from fastslow.errors import ConfigError
from features.offline import OfflineLog

if TYPE_CHECKING:
    from feast import FeatureStore

logger = logging.getLogger(__name__)

ONLINE_STORES = ("sqlite", "redis")


def redis_connection_string(url: str) -> str:
    """Turn ``redis://[:password@]host:port[/db]`` into Feast's ``host:port,db=N,...`` form.

    >>> redis_connection_string("redis://:s3cret@10.0.0.5:6380/1")
    '10.0.0.5:6380,db=1,password=s3cret'
    >>> redis_connection_string("rediss://cache:6379")
    'cache:6379,db=0,ssl=true'
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise ConfigError("redis_url", url, "redis://[:password@]host:port[/db]")
    db = parsed.path.lstrip("/") or "0"
    if not db.isdigit():
        raise ConfigError("redis_url", url, "a numeric database after the port, e.g. /0")
    parts = [f"{parsed.hostname}:{parsed.port or 6379}", f"db={db}"]
    if parsed.password:
        parts.append(f"password={unquote(parsed.password)}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def write_repo_config(repo_dir: str | Path, online_store: str = "sqlite",
                      redis_url: str | None = None, project: str = "fastslow") -> Path:
    """Write ``feature_store.yaml`` into `repo_dir` (created if missing) and return the dir.

    Parameters
    ----------
    repo_dir
        Folder of the repository; the registry, sqlite file and parquet data live under it.
    online_store
        ``"sqlite"`` (a file in the repository, read through
        `features.online_store.FastSqliteOnlineStore`) or ``"redis"`` (needs `redis_url`).
    redis_url
        ``redis://host:port/db`` of the Redis online store.
    project
        Feast project name (tables and keys are namespaced by it).
    """
    if online_store not in ONLINE_STORES:
        raise ConfigError("feast_online_store", online_store, " or ".join(ONLINE_STORES))
    if online_store == "redis":
        if not redis_url:
            raise ConfigError("redis_url", redis_url,
                              "a redis://host:port/db URL when feast_online_store=redis")
        block = f'  type: redis\n  connection_string: "{redis_connection_string(redis_url)}"'
    else:
        # Feast's sqlite store with a faster read (features.online_store).
        block = "  type: features.online_store.FastSqliteOnlineStore\n  path: online.db"
    template = resources.files("features.repo").joinpath("feature_store.yaml").read_text()
    repo = Path(repo_dir)
    repo.mkdir(parents=True, exist_ok=True)
    text = string.Template(template).substitute(project=project, online_store=block)
    (repo / "feature_store.yaml").write_text(text)
    return repo


def open_store(repo_dir: str | Path) -> FeatureStore:
    """A `feast.FeatureStore` over an applied repository directory."""
    from feast import FeatureStore

    path = Path(repo_dir)
    if not (path / "feature_store.yaml").is_file():
        raise ConfigError("feast repository", str(path),
                          "a folder with feature_store.yaml (run `fastslow features apply`)")
    return FeatureStore(repo_path=str(path))


def apply_repo(repo_dir: str | Path, online_store: str = "sqlite",
               redis_url: str | None = None, project: str = "fastslow") -> FeatureStore:
    """Write the configuration, register the definitions, create the online tables.

    Idempotent: applying again keeps the data. Arguments as in `write_repo_config`.
    Returns the `feast.FeatureStore`, ready for pushes and reads.
    """
    from features.repo.definitions import OBJECTS

    write_repo_config(repo_dir, online_store, redis_url, project)
    OfflineLog(repo_dir).ensure_schemas()
    store = open_store(repo_dir)
    store.apply(OBJECTS)
    logger.info("applied feature repository %s (%s online store)", repo_dir, online_store)
    return store
