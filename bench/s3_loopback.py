"""A real S3 API on loopback for the benches (moto's server, in a process of its own) that counts the requests it
serves by kind: LIST, GET, HEAD, PUT, POST, DELETE. `GET /__requests` returns the counts as JSON and starts them
again from zero.

    python bench/s3_loopback.py PORT      # what `s3_loopback()` starts
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from contextlib import contextmanager
from threading import Lock
from typing import Any, Callable, Iterator

from s3fs import S3FileSystem

COUNTS_PATH = "/__requests"


def _kind(method: str, path: str, query: str) -> str:
    """A request's kind: a GET of a bucket (no key) is a LIST."""
    if method == "GET" and ("list-type" in query or path.strip("/").count("/") == 0):
        return "LIST"
    return method


class Counting:
    """WSGI middleware that counts requests by kind and answers COUNTS_PATH itself."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app, self.counts, self.lock = app, Counter(), Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["PATH_INFO"] == COUNTS_PATH:
            with self.lock:
                body, self.counts = json.dumps(dict(self.counts)).encode(), Counter()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        with self.lock:
            self.counts[_kind(environ["REQUEST_METHOD"], environ["PATH_INFO"], environ.get("QUERY_STRING", ""))] += 1
        return self.app(environ, start_response)


@contextmanager
def s3_loopback(port: int) -> Iterator[str]:
    """Start the server on 127.0.0.1:`port` and point this process's AWS settings at it (children inherit them);
    yields the endpoint URL."""
    server = subprocess.Popen([sys.executable, __file__, str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": endpoint})
    S3FileSystem.clear_instance_cache()  # fsspec keeps one per set of options: an earlier server's endpoint
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests(endpoint)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


def requests(endpoint: str) -> dict[str, int]:
    """The requests served since the last call, by kind."""
    with urllib.request.urlopen(endpoint + COUNTS_PATH, timeout=10) as answer:
        return json.loads(answer.read())


def main() -> None:
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = Counting(DomainDispatcherApplication(create_backend_app))
    make_server("127.0.0.1", int(sys.argv[1]), app, True, request_handler=MotoRequestHandler).serve_forever()


if __name__ == "__main__":
    main()
