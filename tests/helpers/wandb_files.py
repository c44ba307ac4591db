"""Read what an offline W&B run wrote: its ``run-<id>.wandb`` transaction log (W&B's record log: a
7-byte header, then 32 KiB blocks of records, each a 7-byte header — CRC, length, type — and a
piece of a protobuf ``Record``), decoded with W&B's own protobuf classes."""
from __future__ import annotations

import json
import struct
from pathlib import Path

HEADER = struct.Struct("<4sHB")  # b":W&B", magic 0xBEE1, version
RECORD = struct.Struct("<IHB")  # crc32, length, type (1 full, 2 first, 3 middle, 4 last)
BLOCK = 32 * 1024


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _ = HEADER.unpack_from(data)
    assert ident == b":W&B" and magic == 0xBEE1, "not a W&B run file"
    pos, pending, out = HEADER.size, b"", []
    while pos + RECORD.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD.size:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = RECORD.unpack_from(data, pos)
        if length == 0 and kind == 0:
            pos += left
            continue
        pos += RECORD.size
        pending += data[pos:pos + length]
        pos += length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def offline_run(path: Path) -> dict:
    """The run's name, tags, config, history (one dict per logged step) and summary."""
    run = {"history": [], "summary": {}, "config": {}}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(name=record.run.display_name, tags=list(record.run.tags), project=record.run.project,
                       group=record.run.run_group)
            run["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            run["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            run["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run["summary"].update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.summary.update})
    return run
