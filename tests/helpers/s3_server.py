"""moto's S3 server on this machine with one bucket (no internet, dummy credentials), for every
object-storage test: ``s3_endpoint()`` yields the endpoint's details for URIs and for readers that
speak S3 themselves (polars)."""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Iterator

from helpers.cluster import free_port

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass(frozen=True)
class Endpoint:
    bucket: str
    host: str  # 127.0.0.1:PORT

    def uri(self, prefix: str) -> str:
        """A bkdbench storage URI (pyarrow's S3 options in the query)."""
        return f"s3://{self.bucket}/{prefix}?endpoint_override={self.host}&scheme=http"

    @property
    def url(self) -> str:
        return f"http://{self.host}"


@contextlib.contextmanager
def s3_endpoint(bucket: str) -> Iterator[Endpoint]:
    from moto.server import ThreadedMotoServer
    import pyarrow.fs as pafs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?endpoint_override=127.0.0.1:{port}&scheme=http"
                                         "&allow_bucket_creation=true")
        fs.create_dir(bucket)
        yield Endpoint(bucket, f"127.0.0.1:{port}")
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
