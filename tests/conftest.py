"""Puts this folder on ``sys.path`` so test modules in every sub-folder can import the shared helper
modules here (``killing``: subprocesses killed at chosen moments). pytest's default import mode
does this for a root conftest already; it is explicit so ``--import-mode=importlib`` works too."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


import os  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def s3_endpoint():
    """A live S3 endpoint on 127.0.0.1 (moto), with the AWS environment pointing at it for this
    process and its subprocesses; skipped only when s3fs or moto is not installed."""
    pytest.importorskip("s3fs", reason="s3:// stores need s3fs (pip install -e '.[s3]')")
    pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (pip install -e '.[test]')")
    from s3_endpoint import S3Endpoint, forget_clients

    endpoint = S3Endpoint().start()
    saved = {k: os.environ.get(k) for k in endpoint.env}
    os.environ.update(endpoint.env)
    forget_clients()
    yield endpoint
    endpoint.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    forget_clients()
