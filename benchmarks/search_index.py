"""`candor bench search`: the search index at 10k, 100k and 1M faces, against exact brute force.

Synthetic but realistic embeddings: identities are unit centres (a few shared "demographic" directions plus an
individual part), each enrolled photo is its identity's centre plus per-photo noise, re-normalised; so a
photo's true neighbours are the other photos of its person (cosine ~0.7, like FaceNet's same-person pairs),
and strangers score ~0 to ~0.2. Queries are new photos: 80% of enrolled people, 20% of strangers.

For each size, in one run, of each engine `--engine` names: the in-function index (one HNSW graph, forced
even below `HNSW_MIN_FACES`): build time, resident memory of the loaded snapshot (measured in a fresh
process), single-query p50/p99, batch latency, recall@1/@10 against exact float32 brute force, and the exact
engines' latency (float32 BLAS, float16 numpy, int8 SIMD with float32 rescoring); S3 Vectors through the
emulator: ingest time (PutVectors of 500 over HTTP), p50/p99 per query, recall@10.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

DIMENSION = 512
PHOTOS_PER_PERSON = 8  # on average; between 1 and 15
GROUPS = 32
SAME_PERSON_NOISE = 0.65  # |noise| / |centre|: cosine between two photos of one person ~ 1 / (1 + 0.65^2)
THRESHOLD_COSINE = 0.47  # settings.COSINE_AT_DEFAULT_THRESHOLD: the matches a user sees
SECTION = "Search index"


def register(bench_subparsers: Any) -> None:
    parser = bench_subparsers.add_parser("search", help="search index: latency, memory, recall at 10k/100k/1M faces")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated collection sizes")
    parser.add_argument("--queries", type=int, default=200, help="queries per size")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--engine",
        default="in-function",
        help="comma-separated engines: in-function (the HNSW index), s3vectors (S3 Vectors through the emulator)",
    )
    parser.add_argument("--batch", type=int, default=32, help="queries per batch for the batch latency")
    parser.add_argument(
        "--expansions", default="", help="also measure these HNSW search expansions on the same graphs, e.g. 128,512"
    )
    parser.add_argument("--no-compare", action="store_true", help="skip the float16 and int8 exact engines")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="one JSON object per size; the Markdown is left alone")
    parser.add_argument(
        "--include", type=Path, help="JSON lines of an earlier run (other sizes) to put in the same table"
    )
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md")
    parser.set_defaults(run=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    sizes = [int(size) for size in str(args.sizes).split(",") if size.strip()]
    engines = [engine.strip() for engine in str(args.engine).split(",") if engine.strip()]
    results = []
    for size in sizes:
        result = bench_size(
            size,
            queries=args.queries,
            k=args.k,
            engines=engines,
            batch=args.batch,
            expansions=[int(e) for e in str(args.expansions).split(",") if e.strip()],
            compare=not args.no_compare,
            seed=args.seed,
            log=(lambda message: None) if args.json else (lambda message: print(message, file=sys.stderr)),
        )
        results.append(result)
        if not args.json:
            print(json.dumps(result), file=sys.stderr, flush=True)  # the raw figures, beside the table
        if args.json:
            print(json.dumps(result), flush=True)
    if not args.json:
        options = f"--queries {args.queries} --engine {args.engine}"
        options += " --no-compare" if args.no_compare else ""
        options += f" --expansions {args.expansions}" if args.expansions else ""
        commands = [f"candor bench search --sizes '{args.sizes}' {options}"]
        if args.include:
            # Sizes measured by earlier `--json` runs of the same code on the same machine; `--sizes ''`
            # measures nothing and only writes the table.
            earlier = [json.loads(line) for line in args.include.read_text().splitlines() if line.startswith("{")]
            results = sorted(earlier + results, key=lambda result: int(result["size"]))
            earlier_sizes = ",".join(str(r["size"]) for r in earlier)
            commands = [
                f"candor bench search --sizes {earlier_sizes} {options} --json >> results.jsonl",
                commands[0] + " --include results.jsonl",
            ]
        body = markdown(results, commands)
        print(body)
        from benchmarks.report import replace_section

        output: Path = args.output
        output.parent.mkdir(parents=True, exist_ok=True)
        document = output.read_text() if output.exists() else None
        output.write_text(replace_section(document, SECTION, body))
        print(f"written to {output}", file=sys.stderr)
    return 0


def synthetic_faces(size: int, queries: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`size` enrolled photos (ids, unit float32 rows) and `queries` new photos, as described above."""
    rng = np.random.default_rng(seed)
    people = max(1, size // PHOTOS_PER_PERSON)
    groups = _unit(rng.standard_normal((GROUPS, DIMENSION), dtype=np.float32))
    strangers = max(1, queries // 5)
    centres = _unit(
        0.4 * groups[rng.integers(0, GROUPS, people + strangers)]
        + 0.92 * _unit(rng.standard_normal((people + strangers, DIMENSION), dtype=np.float32))
    )
    person = np.repeat(np.arange(people), rng.integers(1, 2 * PHOTOS_PER_PERSON, people))[:size]
    if len(person) < size:
        person = np.concatenate([person, rng.integers(0, people, size - len(person))])
    vectors = np.empty((size, DIMENSION), dtype=np.float32)
    for start in range(0, size, 100_000):  # in blocks: the noise of 1M faces at once would be another 2 GB
        block = person[start : start + 100_000]
        vectors[start : start + len(block)] = _unit(centres[block] + _noise(rng, len(block)))
    asked = np.concatenate([rng.integers(0, people, queries - strangers), people + np.arange(strangers)])
    probes = _unit(centres[asked] + _noise(rng, len(asked)))
    return [f"face-{n:08d}" for n in range(size)], vectors, probes


def _noise(rng: np.random.Generator, count: int) -> np.ndarray:
    return SAME_PERSON_NOISE / np.sqrt(DIMENSION) * rng.standard_normal((count, DIMENSION), dtype=np.float32)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return round(float(np.percentile(ms, 50)), 3), round(float(np.percentile(ms, 99)), 3)


def _timed_single(search: Any, probes: Iterable[np.ndarray]) -> tuple[list[Any], list[float]]:
    answers, seconds = [], []
    for probe in probes:
        started = time.perf_counter()
        answers.append(search(probe))
        seconds.append(time.perf_counter() - started)
    return answers, seconds


def _searcher(index: Any, k: int) -> Any:
    return lambda queries: index.search(queries, k, -1.0)


def _recall(found: list[list[str]], truth: list[list[str]], k: int) -> float:
    hits = sum(len(set(f[:k]) & set(t[:k])) for f, t in zip(found, truth, strict=True))
    return round(hits / max(1, sum(min(k, len(t)) for t in truth)), 4)


def bench_size(
    size: int,
    *,
    queries: int,
    k: int,
    engines: list[str] | None = None,
    batch: int,
    expansions: list[int] | None = None,
    compare: bool,
    seed: int,
    log: Any,
) -> dict[str, Any]:
    from candor.index.vectors import ExactVectorIndex, HnswVectorIndex, load_index

    engines = engines or ["in-function"]
    ids, vectors, probes = synthetic_faces(size, queries, seed)
    result: dict[str, Any] = {"size": size, "queries": len(probes), "k": k}

    # Ground truth and the float32 baseline: one BLAS matrix product over every face.
    exact = ExactVectorIndex(vectors.shape[1])
    exact.add(ids, vectors)
    truth = [[n.face_id for n in hits] for hits in exact.search(probes, k, -1.0)]
    truth_matches = [[n.face_id for n in hits] for hits in exact.search(probes, k, THRESHOLD_COSINE)]
    sample = probes[: min(len(probes), 50)]
    _, seconds = _timed_single(_searcher(exact, k), sample)
    result["exact_p50_ms"], result["exact_p99_ms"] = _percentiles(seconds)
    result["exact_memory_mb"] = round(exact.memory_bytes() / 2**20, 1)
    log(f"{size}: exact float32 p50 {result['exact_p50_ms']} ms")
    del exact

    if compare:
        result.update(_exact_variants(ids, vectors, probes[:20], truth[:20], k))
        log(f"{size}: float16 / int8 exact: {result['f16_p50_ms']} / {result['i8_p50_ms']} ms")

    if "s3vectors" in engines:
        result.update(_bench_s3vectors(ids, vectors, probes, truth, k, log))
    if "in-function" not in engines:
        return result
    with tempfile.TemporaryDirectory(prefix="candor-bench-") as tmp:
        # The index an in-function collection gets, with the graph forced at every size.
        started = time.perf_counter()
        built = HnswVectorIndex(vectors.shape[1], min_graph_faces=0)
        for start in range(0, size, 100_000):
            built.add(ids[start : start + 100_000], vectors[start : start + 100_000])
        result["build_s"] = round(time.perf_counter() - started, 2)
        log(f"{size}: HNSW built in {result['build_s']} s")
        snapshot = Path(tmp) / "index"
        started = time.perf_counter()
        built.persist(snapshot)
        result["persist_s"] = round(time.perf_counter() - started, 2)
        del built
        started = time.perf_counter()
        index = load_index(snapshot)
        assert isinstance(index, HnswVectorIndex)
        result["load_s"] = round(time.perf_counter() - started, 2)
        # As served: loaded from its snapshot, float32 rows memory-mapped (disk), the rest resident.
        result["memory_mb"], result["mapped_file_mb"] = _resident_mb(snapshot, probes[:20], Path(tmp) / "probes.npy")
        result["bytes_per_face"] = round(result["memory_mb"] * 2**20 / size)
        result["memory_estimate_mb"] = round(index.memory_bytes() / 2**20, 1)
        result["disk_mb"] = round(sum(f.stat().st_size for f in snapshot.rglob("*") if f.is_file()) / 2**20, 1)
        index.search(probes[:5], k, -1.0)  # touch the pages a first query would fault in
        answers, seconds = _timed_single(_searcher(index, k), probes)
        found = [[n.face_id for n in hits[0]] for hits in answers]
        result["p50_ms"], result["p99_ms"] = _percentiles(seconds)
        result["recall_at_1"] = _recall(found, truth, 1)
        result["recall_at_10"] = _recall(found, truth, k)
        matched = [[n.face_id for n in hits] for hits in index.search(probes, k, THRESHOLD_COSINE)]
        result["recall_at_10_above_threshold"] = _recall(matched, truth_matches, k)
        batches = [probes[i : i + batch] for i in range(0, len(probes), batch)]
        _, seconds = _timed_single(_searcher(index, k), batches)
        result["batch_size"] = batch
        result["batch_p50_ms"], result["batch_p99_ms"] = _percentiles(seconds)
        result["batch_ms_per_query"] = round(result["batch_p50_ms"] / batch, 3)
        log(f"{size}: HNSW p50 {result['p50_ms']} ms, recall@10 {result['recall_at_10']}: {json.dumps(result)}")
        result["directory_mb"] = _directory_mb(size)
        result["directory_bytes_per_face"] = round(result["directory_mb"] * 2**20 / size)
        log(f"{size}: face directory {result['directory_mb']} MB")
        # Search-time expansion trades latency for recall on the same graphs, without a rebuild.
        result["expansions"] = []
        for expansion in expansions or []:
            index.set_expansion_search(expansion)
            answers, seconds = _timed_single(_searcher(index, k), probes)
            found_at = [[n.face_id for n in hits[0]] for hits in answers]
            p50, p99 = _percentiles(seconds)
            matched = [[n.face_id for n in hits] for hits in index.search(probes, k, THRESHOLD_COSINE)]
            result["expansions"].append(
                {
                    "expansion_search": expansion,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "recall_at_1": _recall(found_at, truth, 1),
                    "recall_at_10": _recall(found_at, truth, k),
                    "recall_at_10_above_threshold": _recall(matched, truth_matches, k),
                }
            )
            log(f"{size}: expansion {expansion}: {json.dumps(result['expansions'][-1])}")
        del index

    return result


def _bench_s3vectors(
    ids: list[str], vectors: np.ndarray, probes: np.ndarray, truth: list[list[str]], k: int, log: Any
) -> dict[str, Any]:
    """The S3 Vectors engine through the emulator (moto server with its exact QueryVectors): ingest in
    PutVectors of 500 over HTTP, then one QueryVectors per probe. Exact there, so recall is 1.0 by
    construction and the latency is the emulator's, not AWS's (docs/benchmarks.md projects those)."""
    import boto3

    from candor.adapters.aws import S3VectorStore
    from candor.core.settings import EMBEDDER_VERSION
    from candor.index.s3vectors import S3VectorsIndex
    from candor_local.emulator.moto_server import MotoEmulator

    with MotoEmulator() as emulator:
        client = boto3.client(
            "s3vectors",
            endpoint_url=emulator.endpoint_url,
            region_name=emulator.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        bucket = f"candor-bench-{len(ids)}-{os.getpid()}"  # moto's state outlives one server in a process
        client.create_vector_bucket(vectorBucketName=bucket)
        arn = client.get_vector_bucket(vectorBucketName=bucket)["vectorBucket"]["vectorBucketArn"]
        store = S3VectorStore(arn, client)
        store.create_index("bench", vectors.shape[1])
        index = S3VectorsIndex(store, "bench", EMBEDDER_VERSION, dimension=vectors.shape[1])
        started = time.perf_counter()
        for start in range(0, len(ids), 10_000):
            index.add(ids[start : start + 10_000], vectors[start : start + 10_000])
        ingest_s = round(time.perf_counter() - started, 2)
        answers, seconds = _timed_single(_searcher(index, k), probes[: min(len(probes), 50)])
        found = [[n.face_id for n in hits[0]] for hits in answers]
        p50, p99 = _percentiles(seconds)
        store.delete_index("bench")
        client.delete_vector_bucket(vectorBucketName=bucket)
    figures = {
        "s3v_ingest_s": ingest_s,
        "s3v_p50_ms": p50,
        "s3v_p99_ms": p99,
        "s3v_recall_at_10": _recall(found, truth[: len(found)], k),
    }
    log(f"{len(ids)}: s3vectors (emulator) {json.dumps(figures)}")
    return figures


def _directory_mb(size: int) -> float:
    """What a warm collection's face directory (candor/index/sync.py: id, name, photo, user per face) adds to
    a fresh process's resident set, built from records as the faces table returns them (8 photos a person)."""
    script = (
        "import sys\n"
        "from candor.index.sync import CollectionFaces, FaceEntry\n"
        "from candor.core.faces import BoundingBox, FaceRecord\n"
        "import numpy as np\n"
        "def rss():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssAnon')) * 1024\n"
        "size, vector, box = int(sys.argv[1]), np.zeros(0, dtype=np.float32), BoundingBox(0, 0, 1, 1)\n"
        "before = rss()\n"
        "faces = CollectionFaces(None)\n"
        "for n in range(size):\n"
        "    face_id = f'{n:08x}-0000-4000-8000-{n:012x}'\n"
        "    record = FaceRecord(face_id, f'{n:032x}', box, 1.0, vector, 'm', 'c', f'person-{n // 8:07d}')\n"
        "    faces[face_id] = FaceEntry.of(record)\n"
        "print(rss() - before)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    completed = subprocess.run(
        [sys.executable, "-c", script, str(size)], capture_output=True, text=True, env=env, check=True
    )
    return round(int(completed.stdout.split()[-1]) / 2**20, 1)


def _resident_mb(snapshot: Path, probes: np.ndarray, probes_file: Path) -> tuple[float, float]:
    """What loading the snapshot and answering a few queries adds to a fresh process's resident set, in two
    parts: anonymous memory (RssAnon: the graph, ids and maps, which the process must keep) and mapped file
    pages (RssFile: float32 rows of the snapshot file read through the memory map, clean page cache the
    kernel takes back under pressure; the kernel maps cached pages around each row read)."""
    np.save(probes_file, probes)
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from candor.index.vectors import _load_onnxruntime_first, load_index\n"
        "_load_onnxruntime_first()\n"
        "import usearch.index\n"
        "def rss(field):\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(field)) * 1024\n"
        "before = rss('RssAnon:'), rss('RssFile:')\n"
        "index = load_index(Path(sys.argv[1]))\n"
        "index.search(np.load(sys.argv[2]), 10, -1.0)\n"
        "print(rss('RssAnon:') - before[0], rss('RssFile:') - before[1])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-c", script, str(snapshot), str(probes_file)]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    anonymous, mapped = (int(value) for value in completed.stdout.split()[-2:])
    return round(anonymous / 2**20, 1), round(mapped / 2**20, 1)


def _exact_variants(
    ids: list[str], vectors: np.ndarray, probes: np.ndarray, truth: list[list[str]], k: int
) -> dict[str, Any]:
    """float16 with numpy (no BLAS for half precision), and int8 with SIMD kernels (usearch's exact search)
    whose top candidates are rescored in float32."""
    from candor.index.vectors import _load_onnxruntime_first

    _load_onnxruntime_first()  # usearch first would make the graphs' later onnxruntime import crash the process
    from usearch.index import search as exact_search

    out: dict[str, Any] = {}
    half = vectors.astype(np.float16)
    found, seconds = [], []
    for probe in probes:
        started = time.perf_counter()
        scores = half @ probe.astype(np.float16)
        top = np.argpartition(-scores, k)[:k]
        top = top[np.argsort(-scores[top])]
        seconds.append(time.perf_counter() - started)
        found.append([ids[i] for i in top])
    out["f16_p50_ms"], _ = _percentiles(seconds)
    out["f16_recall_at_10"] = _recall(found, truth, k)
    out["f16_memory_mb"] = round(half.nbytes / 2**20, 1)
    del half
    quantised = np.clip(np.rint(vectors * 127), -127, 127).astype(np.int8)
    found, seconds = [], []
    for probe in probes:
        started = time.perf_counter()
        q = np.clip(np.rint(probe * 127), -127, 127).astype(np.int8)
        keys = exact_search(quantised, q, 64, "cos", exact=True, threads=1).keys.astype(np.int64)
        cosines = vectors[keys] @ probe
        top = keys[np.argsort(-cosines)[:k]]
        seconds.append(time.perf_counter() - started)
        found.append([ids[i] for i in top])
    out["i8_p50_ms"], _ = _percentiles(seconds)
    out["i8_recall_at_10"] = _recall(found, truth, k)
    out["i8_memory_mb"] = round(quantised.nbytes / 2**20, 1)
    return out


def markdown(results: list[dict[str, Any]], commands: list[str]) -> str:
    from benchmarks.report import table

    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {_cpu_count()} cores, Python {platform.python_version()}"
    rows = []
    for r in results:
        rows.append(
            [
                f"{r['size']:,}",
                r["build_s"],
                r["memory_mb"],
                r["bytes_per_face"],
                r.get("mapped_file_mb", "not measured"),
                r["p50_ms"],
                r["p99_ms"],
                f"{r['batch_ms_per_query']} ({r['batch_size']}/batch)",
                r["recall_at_1"],
                r["recall_at_10"],
                r["recall_at_10_above_threshold"],
                r["exact_p50_ms"],
                round(r["exact_p50_ms"] / r["p50_ms"], 1),
                f"{r['directory_mb']} ({r['directory_bytes_per_face']} B/face)"
                if "directory_mb" in r
                else "not measured",
            ]
        )
    main = table(
        [
            "faces",
            "build s",
            "resident MB",
            "B/face",
            "mapped file MB",
            "p50 ms",
            "p99 ms",
            "batch ms/query",
            "recall@1",
            "recall@10",
            "recall@10 (matches ≥ 80)",
            "exact f32 p50 ms",
            "speed-up",
            "face directory MB",
        ],
        rows,
    )
    engines = table(
        ["faces", "engine", "p50 ms / query", "recall@10", "memory MB"],
        [
            row
            for r in results
            for row in (
                [f"{r['size']:,}", "exact float32 (numpy, BLAS)", r["exact_p50_ms"], 1.0, r["exact_memory_mb"]],
                *(
                    [
                        [
                            f"{r['size']:,}",
                            "exact float16 (numpy)",
                            r["f16_p50_ms"],
                            r["f16_recall_at_10"],
                            r["f16_memory_mb"],
                        ],
                        [
                            f"{r['size']:,}",
                            "exact int8 (SIMD) + float32 rescoring of 64",
                            r["i8_p50_ms"],
                            r["i8_recall_at_10"],
                            r["i8_memory_mb"],
                        ],
                    ]
                    if "f16_p50_ms" in r
                    else []
                ),
                [
                    f"{r['size']:,}",
                    "in-function: HNSW int8 (usearch) + float32 rescoring (chosen)",
                    r["p50_ms"],
                    r["recall_at_10"],
                    r["memory_mb"],
                ]
                if "p50_ms" in r
                else [],
                [
                    f"{r['size']:,}",
                    f"s3vectors through the emulator (exact; ingest {r['s3v_ingest_s']} s, p99 {r['s3v_p99_ms']} ms)",
                    r["s3v_p50_ms"],
                    r["s3v_recall_at_10"],
                    "in S3 Vectors",
                ]
                if "s3v_p50_ms" in r
                else [],
            )
            if row
        ],
    )
    sweep = table(
        ["faces", "search expansion", "p50 ms", "p99 ms", "recall@1", "recall@10", "recall@10 (matches ≥ 80)"],
        [
            [
                f"{r['size']:,}",
                e["expansion_search"],
                e["p50_ms"],
                e["p99_ms"],
                e["recall_at_1"],
                e["recall_at_10"],
                e["recall_at_10_above_threshold"],
            ]
            for r in results
            for e in r.get("expansions", [])
        ],
    )
    if any(r.get("expansions") for r in results):
        main += "\n\nThe same graphs searched with other expansions (`--expansions`):\n\n" + sweep
    parts = [
        f"Measured {when} on {machine} (shared with other work), with\n\n```bash\n" + "\n".join(commands) + "\n```",
        main,
        "Engines compared in the same run (float16 and int8 on 20 queries):",
        engines,
    ]
    return "\n\n".join([*parts, NOTES])


NOTES = """\
What the columns mean: *resident MB* is the anonymous memory (RssAnon) that loading the index's snapshot and
answering 20
queries adds to a fresh process: int8 vectors, HNSW links, face ids and their maps, which the process must
keep. The float32 vectors stay in the snapshot's file, memory-mapped, and only the rows of rescored candidates
are read; *mapped file MB* (RssFile) is the snapshot file's pages mapped into the process meanwhile: clean
page cache that the kernel takes back under memory pressure, and more than the rows read, because the
kernel maps the cached pages around each row it faults in. *recall@10* is the share of
exact brute force's top-10 (float32, every face) that the index returns; *matches ≥ 80* counts only
neighbours at or above the default FaceMatchThreshold, which is what a user sees. The synthetic faces: people
as unit centres (32 shared directions plus an individual part), 1 to 15 photos each as noisy copies
(same-person cosine ~0.7, strangers ~0 to 0.2); 80% of queries are new photos of enrolled people, 20% of
strangers.

Choice: `HnswVectorIndex` (usearch HNSW over int8, inner product, connectivity
32, expansion 128 when adding and 256 when searching, 64 candidates rescored in float32), exact brute force
below 20,000 faces (the benchmark forces the graph at every size). The embeddings are unit vectors, so the
inner product is their cosine, and the graph's distance skips the two norms a cosine computes. Exact float32
search is memory-bound (2 KB per face scanned per query); float16 halves the bytes but numpy has no BLAS
kernel for it, so it is slower still; int8 with SIMD kernels and float32 rescoring keeps recall but still scans
512 B per face. Only the graph's cost grows slowly with the collection. Rescoring makes every reported cosine
exact, so the threshold never admits a face the exact search would refuse.

Memory per face (resident, anonymous), ~1.07 KB at 1M: the graph, 788 B per face in the snapshot's graph
file (512 B int8 vector + links, 64 on the base layer, and node header), and the face ids, their maps in the
index (the *B/face* column is measured; small indexes carry usearch's and the interpreter's
fixed costs); 2 KB more on disk for the float32 vectors. So a collection in the function costs ~1.1 KB per face,
plus ~320 B per face of face directory: past 250,000 faces it belongs on S3 Vectors (the rule, README).
usearch's own figure (`memory_usage`; `memory_estimate_mb`
in the JSON) counts its arenas' reserved capacity and overstates this.

*face directory MB* is what the search function keeps of a collection besides its index: each face's id,
name, photo id and user (candor/index/sync.py, `FaceEntry`), measured in a fresh process. Embeddings are
not kept there: the index holds the vectors (S3 Vectors for a collection on that engine). A reload reads only
the collection's change log since the last one, never the whole collection.
"""


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1
