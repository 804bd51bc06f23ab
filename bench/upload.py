"""Upload benchmark: ``upload_tree`` vs plain ``boto3 upload_file`` defaults, same server and run.

Generates a file set (large files + a few small ones, like a run's weights and adapters) in a
temp dir, starts a loopback SeaweedFS, then moto's server (both in one run), uploads it with

- baseline: ``boto3.client("s3").upload_file`` per file, default TransferConfig (8 MiB parts,
  10 threads), default checksums (CRC32), one file after the other;
- ours: ``oneseek_job.storage.upload_tree`` on an ``S3Store`` (one hashing pass per file:
  whole-file SHA-256, CRC32 per part sent as the part's checksum; after upload the server's
  own checksum of the stored bytes is compared by value where the probe saw it validate
  checksums (SeaweedFS) or compute them itself (moto); on a server that does neither, its
  MD5 ETag is compared with the MD5s of the parts we sent, falling back to reading the
  object back and re-hashing it),

each to a fresh prefix, in the same process, alternating order round by round (A B, B A, …),
and prints each side's median seconds and MB/s, the spread ((max − min) ÷ median) and the
ratio of the medians, with the load average before and after each server's rounds. ``--sweep``
also times a grid of part sizes and concurrencies, interleaved with the baseline (how
DEFAULT_PART_SIZE / DEFAULT_CONCURRENCY in storage.py were picked). Results go to
``bench/results/upload.json``.

    python -m bench.upload                  # 1 GiB, both servers
    python -m bench.upload --size-mib 256 --servers seaweedfs --sweep
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import load_average, machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "upload.json"
MiB = 1024 * 1024


def make_files(root: Path, size_mib: int, large: int, small: int = 16) -> int:
    """``large`` files sharing ``size_mib`` MiB plus ``small`` 64 KiB files; returns bytes."""
    total = 0
    each = max(1, size_mib // large) * MiB
    block = os.urandom(MiB)
    for i in range(large):
        path = root / "weights" / f"model-{i}.pth"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            for j in range(each // MiB):
                # distinct content per block so nothing dedups or compresses
                out.write(block[:-16] + j.to_bytes(8, "big") + i.to_bytes(8, "big"))
        total += each
    for i in range(small):
        path = root / "lora_adapters" / "m-adapter" / f"file-{i}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(64 * 1024))
        total += 64 * 1024
    return total


def baseline_upload(client: Any, bucket: str, root: Path, prefix: str) -> float:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    started = time.perf_counter()
    for path in files:
        client.upload_file(str(path), bucket, prefix + path.relative_to(root).as_posix())
    return time.perf_counter() - started


def ours_upload(store: Any, root: Path, prefix: str) -> float:
    from oneseek_job.storage import upload_tree

    started = time.perf_counter()
    upload_tree(store, root, prefix)
    return time.perf_counter() - started


def _bench_server(server: Any, args: argparse.Namespace, root: Path, mb: float) -> dict[str, Any]:
    """Baseline and ours, alternating, on one server; every round's objects deleted after."""
    import boto3
    from botocore.config import Config

    from oneseek_job import storage

    bucket = "oneseek-bench"
    key_id, secret = server.admin.access_key, server.admin.secret_key
    # The baseline is boto3's defaults; path-style is only what the endpoint needs.
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)

    def open_ours(part: int, conc: int) -> Any:
        return storage.open_store(
            f"s3://{bucket}/ours",
            endpoint_url=server.endpoint_url,
            access_key_id=key_id,
            secret_access_key=secret,
            part_size=part,
            multipart_threshold=part,
            concurrency=conc,
        )

    def clear(prefix: str) -> None:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])

    tag = f"{time.time_ns()}"
    load_before = load_average()
    base_times: list[float] = []
    ours_times: list[float] = []
    store = open_ours(storage.DEFAULT_PART_SIZE, storage.DEFAULT_CONCURRENCY)
    caps = store.capabilities  # probed once, outside the timing (as once per job)
    for round_ in range(args.repeat):
        # Alternate the order so neither side always gets the warmer server.
        order = ["base", "ours"] if round_ % 2 == 0 else ["ours", "base"]
        for side in order:
            prefix = f"{tag}/{side}-{round_}/"
            if side == "base":
                base_times.append(baseline_upload(client, bucket, root, prefix))
            else:
                ours_times.append(ours_upload(store, root, prefix))
            last = (base_times if side == "base" else ours_times)[-1]
            print(f"{type(server).__name__} round {round_} {side}: {last:.2f}s", flush=True)
            clear(prefix if side == "base" else "ours/" + prefix)
    store.close()
    sweep = _sweep(client, bucket, root, mb, open_ours, clear, tag) if args.sweep else []
    load_after = load_average()
    base_s = statistics.median(base_times)
    ours_s = statistics.median(ours_times)
    print(
        f"{type(server).__name__} {mb:.0f} MiB: baseline {mb / base_s:.1f} MB/s "
        f"(spread {_spread(base_times):.0%}), ours {mb / ours_s:.1f} MB/s (spread "
        f"{_spread(ours_times):.0%}), ratio (ours speed / baseline) {base_s / ours_s:.2f}x, "
        f"load {load_before} -> {load_after}"
    )
    return {
        "server": type(server).__name__.removesuffix("Server").lower() + " (loopback)",
        "capabilities": {
            "conditional_put": caps.conditional_put,
            "checksum_validation": caps.checksum_validation,
            "checksum_computed": caps.checksum_computed,
        },
        "load_average_before": load_before,
        "load_average_after": load_after,
        "baseline": {
            "what": "boto3 upload_file, default TransferConfig and checksums, sequential",
            "seconds": [round(t, 3) for t in base_times],
            "median_mb_per_s": round(mb / base_s, 1),
            "spread": round(_spread(base_times), 3),
        },
        "ours": {
            "what": "upload_tree: one hashing pass (whole-file SHA-256, CRC32 per part sent "
            "as its checksum; MD5 per part where the server neither validates nor computes "
            "checksums), verified by the server's own checksum where it validates or computes "
            "them, else by its MD5 ETag, else read back and re-hashed",
            "part_mib": storage.DEFAULT_PART_SIZE // MiB,
            "concurrency": storage.DEFAULT_CONCURRENCY,
            "seconds": [round(t, 3) for t in ours_times],
            "median_mb_per_s": round(mb / ours_s, 1),
            "spread": round(_spread(ours_times), 3),
        },
        "speedup_vs_baseline": round(base_s / ours_s, 3),
        # slowest ours ÷ fastest baseline … fastest ours ÷ slowest baseline
        "speedup_range": [
            round(min(base_times) / max(ours_times), 3),
            round(max(base_times) / min(ours_times), 3),
        ],
        "sweep": sweep,
    }


def _sweep(
    client: Any,
    bucket: str,
    root: Path,
    mb: float,
    open_ours: Callable[[int, int], Any],
    clear: Callable[[str], None],
    tag: str,
    rounds: int = 2,
) -> list[dict[str, Any]]:
    """Part size x concurrency grid, each cell timed ``rounds`` times interleaved with the
    baseline (order reversed every round, so a server that speeds up or slows down as it
    fills does not favour one end of the grid); ratio = baseline median / cell median."""
    cells: list[tuple[int, int] | None] = [None]  # None: the baseline
    cells += [
        (part, conc) for part in (8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB) for conc in (2, 4, 8)
    ]
    times: dict[tuple[int, int] | None, list[float]] = {cell: [] for cell in cells}
    for round_ in range(rounds):
        for cell in cells if round_ % 2 == 0 else cells[::-1]:
            if cell is None:
                prefix = f"{tag}/sweep-base-{round_}/"
                times[cell].append(baseline_upload(client, bucket, root, prefix))
                clear(prefix)
                continue
            candidate = open_ours(*cell)
            prefix = f"{tag}/sweep-{cell[0] // MiB}-{cell[1]}-{round_}/"
            times[cell].append(ours_upload(candidate, root, prefix))
            candidate.close()
            clear("ours/" + prefix)
    base = statistics.median(times[None])
    rows = []
    for cell in cells[1:]:
        assert cell is not None
        median = statistics.median(times[cell])
        rows.append(
            {
                "part_mib": cell[0] // MiB,
                "concurrency": cell[1],
                "seconds": [round(t, 3) for t in times[cell]],
                "mb_per_s": round(mb / median, 1),
                "speedup_vs_baseline": round(base / median, 3),
            }
        )
        print(
            f"sweep part={cell[0] // MiB}MiB conc={cell[1]}: {mb / median:.1f} MB/s, "
            f"{base / median:.2f}x baseline ({mb / base:.1f} MB/s)",
            flush=True,
        )
    return rows


def _spread(samples: list[float]) -> float:
    """(max − min) ÷ median of the samples."""
    return (max(samples) - min(samples)) / statistics.median(samples)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark on SeaweedFS and moto; print a summary and write upload.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="total size of large files")
    parser.add_argument("--files", type=int, default=4, help="number of large files")
    parser.add_argument("--repeat", type=int, default=6, help="timed rounds per variant")
    parser.add_argument("--sweep", action="store_true", help="also time part size/concurrency")
    parser.add_argument(
        "--servers", default="seaweedfs,moto", help="comma-separated: seaweedfs, moto"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from oneseek_job.logs import configure_logging

    configure_logging(level="WARNING")  # per-file upload events would drown the summary

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.servers import MotoServer, SeaweedServer

    kinds = {"seaweedfs": SeaweedServer, "moto": MotoServer}
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="oneseek-bench-") as tmp:
        root = Path(tmp)
        total = make_files(root, args.size_mib, args.files)
        mb = total / MiB
        for name in args.servers.split(","):
            server = kinds[name.strip()]().start()
            try:
                runs.append(_bench_server(server, args, root, mb))
            finally:
                server.stop()
    result = {
        "benchmark": "upload",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "niceness": os.nice(0),
        "total_mib": round(mb, 1),
        "large_files": args.files,
        "repeats": args.repeat,
        "servers": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
