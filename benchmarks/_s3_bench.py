"""bench_read.py --s3: read_slices from a bucket of moto's S3 server against local disk, and moto's ceiling.

Convention: moto runs in its own process (tests/s3_endpoint.py, ``moto_process``) on
127.0.0.1; CPU times of the server come from ``/proc/<pid>/stat``, the reader's from
``time.process_time`` (s3fs's event-loop thread included). Besides the ratio it measures
what bounds it, so a reader of the output sees the ceiling:

* requests per batch, counted from s3fs's own log of every call (``CALL: get_object``):
  one GET per distinct recorded chunk of the batch, no HEAD, no listing, no metadata;
* the server against a trivial GET loop (``http.client``, no botocore): the requests/s
  moto sustains and its CPU per request, i.e. the most any client can get from it;
* moto's S3 application called in-process (no HTTP server, no socket): the CPU per
  GetObject of moto's own code, the floor for any HTTP server hosting it;
* the best ratio these allow: (requests/s / requests per slice) / local slices/s.
"""

from __future__ import annotations

import collections
import http.client
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

# moto checks no signature by default: a well-formed SigV4 header routes the request to S3.
_AUTH = {"Authorization": "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/s3/aws4_request, "
                          "SignedHeaders=host, Signature=0"}

_APP_FLOOR = """
import os, sys, time
os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.test import Client
client, headers = Client(DomainDispatcherApplication(create_backend_app)), {AUTH!r}
payload = os.urandom({size})
assert client.put("/bench", headers=headers).status_code == 200
assert client.put("/bench/chunk", data=payload, headers=headers).status_code == 200
assert client.get("/bench/chunk", headers=headers).data == payload
started = time.process_time()
for _ in range({count}):
    client.get("/bench/chunk", headers=headers).data
print((time.process_time() - started) / {count})
"""


def moto_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process: the test suite's (tests/s3_endpoint.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from s3_endpoint import moto_process

    return moto_process()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _CallLog(logging.Handler):
    """Counts s3fs's ``CALL: <operation> ...`` debug lines: one per request it sends."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.calls: collections.Counter = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("CALL: "):
            self.calls[message.split()[1]] += 1


def requests_per_batch(reader, batches) -> tuple[dict[str, float], float]:
    """Requests s3fs sent per batch, by operation, and the distinct recorded chunks per batch."""
    store, names = reader.store, ("image", *(f"labels/{n}" for n in reader.labels))
    chunks = [{r.chunk_path(z) for c, z in batch for r in [store._reader(c, a) for a in names] if r.has_chunk(z)}
              for batch in batches]
    log, logger = _CallLog(), logging.getLogger("s3fs")
    level = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.DEBUG)
    try:
        for batch in batches:
            reader(batch)
    finally:
        logger.removeHandler(log)
        logger.setLevel(level)
    return {op: n / len(batches) for op, n in log.calls.items()}, sum(map(len, chunks)) / len(batches)


def trivial_get_rate(server: subprocess.Popen, url: str, key: str, threads: int, count: int = 300) -> tuple[float, float]:
    """Requests/s and server ms CPU per request of a plain ``http.client`` GET loop (``threads`` at once)."""
    host, port = url.rsplit("//", 1)[1].split(":")

    def loop(n: int) -> None:
        for _ in range(n):  # moto's server closes every connection (werkzeug): a new one each time
            connection = http.client.HTTPConnection(host, int(port))
            connection.request("GET", f"/{key}", headers=_AUTH)
            response = connection.getresponse()
            response.read()
            connection.close()
            if response.status != 200:
                raise SystemExit(f"trivial GET of /{key}: HTTP {response.status}")

    per_thread = count // threads
    workers = [threading.Thread(target=loop, args=(per_thread,)) for _ in range(threads)]
    before, started = cpu_seconds(server.pid), time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done = per_thread * threads
    return done / (time.perf_counter() - started), 1000 * (cpu_seconds(server.pid) - before) / done


def app_floor_ms(size: int, count: int = 500) -> float:
    """ms CPU per GetObject of moto's S3 application called in-process (a child process, no HTTP)."""
    code = _APP_FLOOR.format(AUTH=_AUTH, size=size, count=count)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return 1000 * float(done.stdout.strip().splitlines()[-1])


def s3_rates(reader_class, path: Path, batches, timed, seconds: float, rounds: int = 3) -> dict:
    """read_slices slices/s from the store on local disk and from a copy in a bucket of moto's server,
    ``rounds`` alternating rounds, and what bounds the bucket (see the module docstring)."""
    server, url = moto_server()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=url)
    try:
        import fsspec

        fs = fsspec.filesystem("s3")
        fs.mkdir("bench")
        fs.put(str(path), "bench/read.zarr", recursive=True)
        local_reader, remote_reader = reader_class(path), reader_class("s3://bench/read.zarr")
        want, got = local_reader(batches[0]), remote_reader(batches[0])
        if not (np.array_equal(want[0], got[0]) and all(np.array_equal(want[1][n], got[1][n]) for n in want[1])):
            raise SystemExit("the bucket returned different slices")
        local, remote, loads = [], [], []
        for _ in range(rounds):
            local.append(timed(local_reader, batches, seconds)[0])
            remote.append(timed(remote_reader, batches, seconds)[0])
            loads.append(os.getloadavg()[0])
        sample = batches[:50]
        calls, chunks = requests_per_batch(remote_reader, sample)
        before, client_before = cpu_seconds(server.pid), time.process_time()
        started = time.perf_counter()
        for batch in sample:
            remote_reader(batch)
        elapsed = time.perf_counter() - started
        server_cpu, client_cpu = cpu_seconds(server.pid) - before, time.process_time() - client_before
        requests = chunks * len(sample)
        image = remote_reader.store._reader(batches[0][0][0], "image")
        key = next(image.chunk_path(z) for _, z in batches[0] if image.has_chunk(z))
        size = len(fs.cat_file(key))
        trivial = {threads: trivial_get_rate(server, url, key, threads) for threads in (1, 2)}
        return {"local": local, "remote": remote, "loads": loads, "calls": calls, "chunks_per_batch": chunks,
                "server_ms": 1000 * server_cpu / requests, "client_ms": 1000 * client_cpu / requests,
                "requests_per_s": requests / elapsed, "wall_ms": 1000 * elapsed / requests,
                "trivial": trivial, "app_ms": app_floor_ms(size), "chunk_bytes": size}
    finally:
        server.kill()
        server.wait()
