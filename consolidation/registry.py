"""The MLflow model registry for the slow ranker: log, register, alias, load, promote, roll back.

Storage (MLflow 3): a sqlite backend (``sqlite:///<data dir>/mlflow.db``) and local artifacts
under ``<data dir>/mlartifacts`` by default; any tracking URI (an MLflow server) works too.

Model format: the ``mlflow.pytorch`` flavor with ``serialization_format="pickle"`` (the net as
a `models.slow_net.SlowRankerNet`, so a loaded champion can keep training and growing; the
default ``pt2`` format is an inference-only export that needs an ``input_example``) plus
``extra_files/ranker.json`` holding the ranker's constructor parameters and its user and item
vocabularies. ``pip_requirements`` are passed explicitly (inferring them takes seconds).
Loading reads those two files straight from the local artifact store (no copy) and rebuilds a
`models.slow.SlowRanker`; anything that can read the flavor can still load just the net with
``mlflow.pytorch.load_model("models:/NAME@champion")``.

Aliases: ``challenger`` (the latest consolidation's model) and ``champion`` (the one serving).
Promotion stamps the version with a ``champion_since`` tag before moving the alias, which is
how `rollback` finds the previous champion. Watchers poll `ModelRegistry.champion_version`
(one indexed sqlite query) and load only when it changes.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from fastslow.errors import FastslowError

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_ARTIFACT = "ranker"
FISHER_ARTIFACT = "fisher/fisher.pt"
_FORMAT = 1


class RegistryError(FastslowError):
    """The model registry does not hold what was asked for."""

    def __init__(self, model_name: str, what: str, hint: str) -> None:
        self.model_name, self.what, self.hint = model_name, what, hint
        super().__init__(f"model {model_name!r}: {what} ({hint})")


class NoChampionError(RegistryError):
    """No version carries the ``champion`` alias yet."""

    def __init__(self, model_name: str, tracking_uri: str) -> None:
        super().__init__(model_name, f"no version has the alias 'champion' in {tracking_uri}",
                         "run `fastslow consolidate` (the first run trains one), or `fastslow promote VERSION`")


def default_tracking_uri(data_dir: str | Path) -> str:
    """The embedded default: a sqlite file in the data dir.

    >>> default_tracking_uri("/data")
    'sqlite:////data/mlflow.db'
    """
    return f"sqlite:///{(Path(data_dir) / 'mlflow.db').absolute()}"


def default_artifact_root(tracking_uri: str) -> str | None:
    """``mlartifacts`` next to a sqlite database; None (the server decides) otherwise.

    >>> default_artifact_root("sqlite:////data/mlflow.db")
    'file:///data/mlartifacts'
    >>> default_artifact_root("http://mlflow:5000") is None
    True
    """
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").absolute().as_uri()
    return None


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as `fastslow models` shows it."""

    version: int
    aliases: tuple[str, ...]
    created_ms: int
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        """Gate metrics recorded on the version (tags ``metric.<name>``)."""
        return {k[len("metric."):]: float(v) for k, v in self.tags.items() if k.startswith("metric.")}


def _ranker_params(ranker) -> dict:
    names = [p for p in inspect.signature(type(ranker).__init__).parameters if p != "self"]
    return {name: getattr(ranker, name) for name in names}


def _local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri:
        return Path(uri)
    return None


class ModelRegistry:
    """Registry access for one model name under one tracking URI.

    Examples
    --------
    >>> registry = ModelRegistry(default_tracking_uri("/data"), "demo")
    >>> registry.tracking_uri, registry.artifact_root
    ('sqlite:////data/mlflow.db', 'file:///data/mlartifacts')
    """

    def __init__(self, tracking_uri: str, model_name: str = "fastslow-ranker", *,
                 experiment: str = "fastslow-consolidation", artifact_root: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.experiment = experiment
        self.artifact_root = artifact_root or default_artifact_root(tracking_uri)
        self._client = None
        self._experiment_id: str | None = None

    @property
    def client(self):
        """The `mlflow.MlflowClient` (created on first use: importing mlflow takes seconds)."""
        if self._client is None:
            from mlflow import MlflowClient
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    # ------------------------------------------------------------------ runs
    def experiment_id(self) -> str:
        """Id of the consolidation experiment, created (with local artifacts) on first use."""
        if self._experiment_id is not None:
            return self._experiment_id
        from mlflow.exceptions import MlflowException
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            try:
                self._experiment_id = str(self.client.create_experiment(self.experiment, self.artifact_root))
                return self._experiment_id
            except MlflowException as exc:  # created meanwhile by another process
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = self.client.get_experiment_by_name(self.experiment)
        self._experiment_id = str(found.experiment_id)
        return self._experiment_id

    @contextmanager
    def start_run(self, run_name: str | None = None, tags: Mapping[str, str] | None = None) -> Iterator:
        """An active MLflow run in this registry's experiment; FAILED if the block raises.

        The process-wide tracking URI is pointed here for the block (``mlflow.pytorch`` logs
        through it) and restored afterwards.
        """
        import mlflow
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.tracking_uri)
        try:
            with mlflow.start_run(experiment_id=self.experiment_id(), run_name=run_name, tags=dict(tags or {})) as run:
                yield run
        finally:
            mlflow.set_tracking_uri(previous)

    def log_fisher(self, run_id: str, fisher: Mapping) -> None:
        """Store a Fisher diagonal (name -> tensor) as the run's ``fisher/fisher.pt``."""
        import torch
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(FISHER_ARTIFACT).name
            torch.save({name: t.detach().cpu() for name, t in fisher.items()}, path)
            self.client.log_artifact(run_id, str(path), str(Path(FISHER_ARTIFACT).parent))

    def load_fisher(self, version: int) -> dict | None:
        """The Fisher logged by the run that produced ``version`` (None if it logged none)."""
        import torch
        run_id = self.client.get_model_version(self.model_name, str(version)).run_id
        if not run_id:
            return None
        names = {a.path for a in self.client.list_artifacts(run_id, str(Path(FISHER_ARTIFACT).parent))}
        if FISHER_ARTIFACT not in names:
            return None
        local = _local_path(self.client.get_run(run_id).info.artifact_uri)
        if local is not None and (local / FISHER_ARTIFACT).exists():
            return torch.load(local / FISHER_ARTIFACT, weights_only=True)
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, FISHER_ARTIFACT, tmp)
            return torch.load(path, weights_only=True)

    # ------------------------------------------------------------------ models
    def log_ranker(self, ranker, name: str = MODEL_ARTIFACT):
        """Log a SlowRanker in the active run (see the module docstring); returns MLflow's ModelInfo."""
        import mlflow
        import mlflow.pytorch
        import numpy as np
        import torch
        net = ranker.net if ranker.device == "cpu" else copy.deepcopy(ranker.net).cpu()
        meta = {"format": _FORMAT, "class": f"{type(ranker).__module__}:{type(ranker).__qualname__}",
                "params": _ranker_params(ranker), "users": ranker.users.ids(), "items": ranker.items.ids()}
        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                        f"numpy=={np.__version__}"]
        with tempfile.TemporaryDirectory() as tmp:
            extra = Path(tmp) / "ranker.json"
            extra.write_text(json.dumps(meta))
            return mlflow.pytorch.log_model(net, name=name, serialization_format="pickle",
                                            pip_requirements=requirements, extra_files=[str(extra)])

    def register(self, model_info, run_id: str, tags: Mapping[str, str] | None = None) -> int:
        """A new version of the model from a logged model; returns its number."""
        from mlflow.exceptions import MlflowException
        try:
            self.client.create_registered_model(self.model_name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = self.client.create_model_version(self.model_name, model_info.model_uri, run_id=run_id,
                                              tags={k: str(v) for k, v in (tags or {}).items()},
                                              model_id=model_info.model_id)
        return int(mv.version)

    def _model_dir(self, version: int) -> tuple[Path, tempfile.TemporaryDirectory | None]:
        uri = self.client.get_model_version_download_uri(self.model_name, str(version))
        local = _local_path(uri)
        if local is not None and local.exists():
            return local, None
        from mlflow.artifacts import download_artifacts
        tmp = tempfile.TemporaryDirectory()
        path = download_artifacts(artifact_uri=f"models:/{self.model_name}/{version}", dst_path=tmp.name,
                                  tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return Path(path), tmp

    def load(self, version: int | str, device: str = "cpu"):
        """The SlowRanker stored as ``version`` (a number, or an alias such as ``"champion"``)."""
        import mlflow.pytorch
        from models.slow import SlowRanker
        from models.vocab import Vocab
        number = self.version_of(version) if isinstance(version, str) and not version.isdigit() else int(version)
        if number is None:
            raise RegistryError(self.model_name, f"no version has the alias {version!r}",
                                "see `fastslow models` for versions and aliases")
        path, tmp = self._model_dir(number)
        try:
            meta = json.loads((path / "extra_files" / "ranker.json").read_text())
            net = mlflow.pytorch.load_model(str(path), map_location=device)
        finally:
            if tmp is not None:
                tmp.cleanup()
        ranker = SlowRanker(**{**meta["params"], "device": device})
        ranker.users, ranker.items = Vocab(meta["users"]), Vocab(meta["items"])
        ranker.net = net.to(device)
        ranker.refresh()
        return ranker

    def load_champion(self, device: str = "cpu"):
        """``(version, SlowRanker)`` of the champion, or `NoChampionError`."""
        version = self.champion_version()
        if version is None:
            raise NoChampionError(self.model_name, self.tracking_uri)
        return version, self.load(version, device)

    def load_if_changed(self, current: int | None, device: str = "cpu"):
        """``(version, SlowRanker)`` if the champion is no longer ``current``, else None.

        What hot-reload watchers call on every poll: one alias lookup (milliseconds) while
        nothing changed, a load only after a promotion or rollback.
        """
        version = self.champion_version()
        if version is None or version == current:
            return None
        return version, self.load(version, device)

    # ------------------------------------------------------------------ aliases
    def version_of(self, alias: str) -> int | None:
        """The version holding ``alias``, or None (also when the model does not exist yet)."""
        from mlflow.exceptions import MlflowException
        try:
            return int(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def champion_version(self) -> int | None:
        """The champion's version number (cheap: meant to be polled by hot-reload watchers)."""
        return self.version_of(CHAMPION)

    def set_alias(self, alias: str, version: int) -> None:
        self.client.set_registered_model_alias(self.model_name, alias, str(version))

    def set_version_tags(self, version: int, tags: Mapping[str, object]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, str(version), key, str(value))

    def promote(self, version: int, reason: str = "manual promotion") -> int | None:
        """Make ``version`` the champion; returns the previous champion (None if there was none)."""
        info = self.version_info(version)
        previous = self.champion_version()
        self.set_version_tags(info.version, {"champion_since": int(time.time() * 1000), "promotion.reason": reason})
        self.set_alias(CHAMPION, info.version)  # last: a crash before this leaves the champion as it was
        logger.info("model %s: champion v%s -> v%s (%s)", self.model_name, previous, version, reason)
        return previous

    def rollback(self, reason: str = "rollback") -> int:
        """Promote the version that was champion before the current one; returns it."""
        current = self.champion_version()
        earlier = [v for v in self.versions() if "champion_since" in v.tags and v.version != current]
        if not earlier:
            raise RegistryError(self.model_name, "no earlier champion to roll back to",
                                "promote a version explicitly with `fastslow promote VERSION`")
        target = max(earlier, key=lambda v: int(v.tags["champion_since"])).version
        self.promote(target, reason)
        return target

    # ------------------------------------------------------------------ listing
    def version_info(self, version: int) -> VersionInfo:
        from mlflow.exceptions import MlflowException
        try:
            mv = self.client.get_model_version(self.model_name, str(version))
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            raise RegistryError(self.model_name, f"version {version} does not exist",
                                "see `fastslow models` for the versions there are") from None
        return self._info(mv)

    def versions(self) -> list[VersionInfo]:
        """Every version, newest first."""
        from mlflow.exceptions import MlflowException
        try:
            aliases = self.client.get_registered_model(self.model_name).aliases or {}
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return []
        found = self.client.search_model_versions(f"name='{self.model_name}'")
        return sorted((self._info(mv, aliases) for mv in found), key=lambda v: -v.version)

    @staticmethod
    def _info(mv, aliases: Mapping[str, str] | None = None) -> VersionInfo:
        """VersionInfo of a ModelVersion; ``aliases`` (alias -> version) fills in what searches leave out."""
        names = set(mv.aliases or ()) | {a for a, v in (aliases or {}).items() if int(v) == int(mv.version)}
        return VersionInfo(int(mv.version), tuple(sorted(names)), int(mv.creation_timestamp or 0),
                           mv.run_id, dict(mv.tags or {}))
