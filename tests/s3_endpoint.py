"""A real S3 endpoint on the loopback for the tests: moto's server, reached the way users reach theirs.

How users point lesionkit at an S3-compatible server (README, "Datasets in a bucket"):
the AWS environment, which botocore (under s3fs) reads in every process, local workers
and dask workers included: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION`` and ``AWS_ENDPOINT_URL``. The fixtures set exactly these.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "lesionkit-test", "AWS_SECRET_ACCESS_KEY": "lesionkit-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def forget_clients() -> None:
    """Drop fsspec's cached S3 filesystems: the next one reads the environment (endpoint, keys) again."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@dataclass
class S3Endpoint:
    """moto's ThreadedMotoServer on 127.0.0.1; ``stop``/``start`` keep the buckets (moto's state is per process)."""

    port: int = 0
    server: object = field(default=None, repr=False)

    def start(self) -> "S3Endpoint":
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]
        return self

    def stop(self) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.url}

    def new_bucket(self) -> str:
        import boto3

        name = f"lesionkit-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.url, **_boto_keys()).create_bucket(Bucket=name)
        return name


def _boto_keys() -> dict[str, str]:
    return {"aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"], "region_name": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def moto_process(env: dict | None = None, timeout_s: float = 60) -> tuple[subprocess.Popen, str]:
    """moto's S3 server in a process of its own (sharing ours, it would share the GIL): (process, endpoint URL)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto server did not start")


def checking_server() -> tuple[subprocess.Popen, str]:
    """A moto server in its own process that checks credentials (moto's IAM auth, on from the first request)."""
    return moto_process({**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}, timeout_s=30)
