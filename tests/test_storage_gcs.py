"""Results on Google Cloud Storage: ``Location`` and a digits suite with ``--storage gs://...``
against a GCS JSON-API emulator on this machine (gcp-storage-emulator; no internet, no credentials:
``anonymous=true``). The S3 tests (test_storage.py) cover resume and clusters in depth; these
prove that the same code paths hold on pyarrow's GCS filesystem, which differs from S3 in ways that
matter (folders are prefixes with optional marker objects, and Arrow asks for Google credentials
unless told not to)."""
from __future__ import annotations

import json
import logging
import urllib.request
import uuid

import pytest

from bkdbench.storage import Location, LocationError, pull, push
from helpers.cluster import free_port
from helpers.storage import check_lease_makes_a_second_driver_wait, check_suite_on_store
from helpers.sweeps import check_sigkilled_sweep_resumes


@pytest.fixture(scope="module")
def gcs():
    """A GCS endpoint with one bucket; yields a URI factory for prefixes."""
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    port = free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True)
    server.start()
    bucket = f"bkd-{uuid.uuid4().hex[:8]}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/storage/v1/b?project=bkdbench",
                                     data=json.dumps({"name": bucket}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=10).read()
        query = f"anonymous=true&endpoint_override=127.0.0.1:{port}&scheme=http&retry_limit_seconds=10"
        yield lambda prefix: f"gs://{bucket}/{prefix}?{query}"
    finally:
        server.stop()


def test_a_lease_on_gcs_makes_a_second_driver_wait(gcs, tmp_path):
    check_lease_makes_a_second_driver_wait(gcs, tmp_path)


def test_gcs_location_round_trip(gcs, cache):
    root = Location(gcs(f"loc-{uuid.uuid4().hex[:6]}"))
    root.check_writable()
    f = root / "a" / "b.txt"
    assert not f.exists() and root.list() == []
    f.write_text("one")
    f.write_text("two")
    assert f.read_text() == "two" and (root / "a").list() == ["b.txt"] and (root / "a").exists()
    with pytest.raises(FileNotFoundError):
        (root / "missing").read_bytes()
    # A folder holding only folders is a prefix with no object of its own: still listed.
    (root / "n" / "m" / "c.txt").write_text("x")
    assert root.list() == ["a", "n"] and (root / "n").list() == ["m"]
    (root / "n").delete()
    # A folder made only by writing a file in it has no marker object: deleting it must still work.
    (root / "a").delete()
    assert not (root / "a").exists() and root.list() == []
    (root / "never").delete()

    journal = root / "sweeps" / "s1" / "study.journal"  # the sweep journal's driver-local copy
    copy = pull(journal)
    assert not copy.exists()
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text("line 1\n")
    push(journal)
    assert journal.read_text() == "line 1\n"


def test_gcs_options_are_checked():
    with pytest.raises(LocationError, match="anonymous"):
        Location("gs://bucket/x?anonymous=false&endpoint_override=127.0.0.1:1").exists()
    with pytest.raises(LocationError, match="foo"):
        Location("gs://bucket/x?anonymous=true&foo=1").exists()


@pytest.mark.slow
def test_suite_on_gcs_end_to_end(gcs, tmp_path):
    check_suite_on_store(gcs, tmp_path, "gsmini")


@pytest.mark.slow
def test_sigkilled_sweep_on_gcs_resumes_from_the_bucket(gcs, tmp_path):
    """As on S3 (test_storage.py): SIGKILL, --resume with an empty local cache, nothing finished lost."""
    check_sigkilled_sweep_resumes(gcs(f"sweep-{uuid.uuid4().hex[:6]}"), tmp_path)
