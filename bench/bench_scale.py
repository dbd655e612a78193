"""Goodreads-size end to end: generate a dump, run every stage as the nightly DAG does, then a 1% delta.

    .venv/bin/python bench/bench_scale.py                   # 2,400,000 books (the public dump has 2.36M)
    .venv/bin/python bench/bench_scale.py --nodes 100000    # smaller; results go to scale_100k.{md,json}

1. Generates a Goodreads-format dump (gzip JSON lines, several files, in parallel, numpy-vectorised):
   ~20 popular_shelves, a description of several hundred characters, similar_books with a heavy-tailed
   in-degree (most links go to a few popular books, 80% of them inside the book's own community) and an
   out-degree of 0-18 (mean ~10), ~3% dangling links, image_url on the loopback sample server.
2. Full build on the local S3 server (`g2i s3 start`), each stage the command line the DAG runs
   (g2i_core/orchestration/stages.py: a `g2i` subprocess with the local master, spark-submit on a cluster):
   ingest -> build-graph -> ppr -> embed -> rerank. Image download is measured apart: fetch-images of a
   50k-node slice from the loopback image server with 20 ms latency per request.
3. A 1% delta (new books, changed books, and removed books) runs the nightly delta path:
   ingest --mode delta, build-graph, ppr, embed (content-hash cache: only new/changed titles are
   encoded), rerank. Delta mode only adds or replaces nodes (docs/ingest.md); removed books are listed
   in the results and are dropped by the next full dump.
4. Per stage: wall time, CPU time (user+sys of the stage's whole process tree, Spark JVM included),
   peak RSS of the process tree (psutil, sampled every 0.5 s) and the size of the tables it published.
   Writes bench/results/scale[_<n>].{md,json}.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
TARGET_FULL_S = 60 * 60  # full build, image download excluded
TARGET_DELTA_S = 10 * 60  # nightly 1% delta
COMMUNITY = 2000  # books per community (shared shelves and most similar_books links)
IMAGE_BASE = "http://127.0.0.1:8765"
STAGE_TABLES = {
    "ingest": ("nodes", "edges", "quarantine", "node_changes"),
    "fetch-images": ("node_images",),
    "build-graph": ("graph_nodes", "graph_edges"),
    "ppr": ("ppr_candidates", "ppr_rows"),
    "embed": ("embeddings",),
    "rerank": ("neighbours",),
}


# ---- the dump ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _vocab(seed: int, size: int, lo: int, hi: int) -> np.ndarray:
    """Pronounceable pseudo-words (object array): unique enough that titles rarely repeat."""
    rng = np.random.default_rng(seed)
    cons, vows = list("bcdfghklmnprstvwz"), list("aeiou")
    out = []
    for _ in range(size):
        n = int(rng.integers(lo, hi + 1))
        out.append("".join(cons[rng.integers(len(cons))] + vows[rng.integers(len(vows))] for _ in range(n)))
    return np.array(out, dtype=object)


def _links(rng: np.random.Generator, ids: np.ndarray, n: int, popular: np.ndarray) -> list[np.ndarray]:
    """similar_books targets (global book index) per book of ``ids``."""
    deg = np.minimum(rng.negative_binomial(3, 3 / 15, size=len(ids)), 18)
    deg[rng.random(len(ids)) < 0.15] = 0  # many books have no similar_books
    total = int(deg.sum())
    src = np.repeat(ids, deg)
    u = rng.random(total)
    local = rng.random(total) < 0.8
    # heavy tail: rank ~ size * u^3 over a fixed popularity order (a few books collect most links)
    block = (src // COMMUNITY) * COMMUNITY
    size = np.minimum(COMMUNITY, n - block)
    local_t = block + (popular[(block // COMMUNITY) % len(popular)] + (size * u ** 3).astype(np.int64)) % size
    global_t = (n * u ** 3).astype(np.int64) * 7919 % n
    targets = np.where(local, local_t, global_t)
    dangling = rng.random(total) < 0.03
    targets = np.where(dangling, n + 10_000_000 + (u * 1e6).astype(np.int64), targets)
    return np.split(targets, np.cumsum(deg)[:-1])


def _book_id(i: int) -> str:
    return str(1_000_000 + 7 * int(i))


def _records(ids: np.ndarray, n: int, seed: int, variant: int = 0) -> list[str]:
    """JSON lines of books ``ids`` (indices); ``variant`` > 0 changes title, description and links (a delta)."""
    rng = np.random.default_rng([seed, int(ids[0]) if len(ids) else 0, variant])
    words = _vocab(seed, 20_000, 1, 4)
    shelves = _vocab(seed + 1, 400, 2, 4)
    popular = np.random.default_rng([seed, 7]).integers(0, COMMUNITY, size=4096)
    m = len(ids)
    links = _links(rng, ids, n, popular)
    n_title = rng.integers(2, 7, size=m)
    n_desc = rng.integers(50, 110, size=m)  # ~6.5 chars a word: 330-720 characters
    title_words = words[rng.integers(0, len(words), size=int(n_title.sum()))]
    desc_words = words[rng.integers(0, len(words), size=int(n_desc.sum()))]
    t_off = np.concatenate([[0], np.cumsum(n_title)])
    d_off = np.concatenate([[0], np.cumsum(n_desc)])
    community = ids // COMMUNITY
    # ~20 shelves: 8 from the community's own set, 12 from all shelves; counts fall off with rank
    shelf_idx = np.concatenate([(community[:, None] * 13 + np.arange(8)[None, :]) % len(shelves),
                                rng.integers(0, len(shelves), size=(m, 12))], axis=1)
    n_shelves = rng.integers(14, 21, size=m)
    counts = (rng.pareto(1.2, size=(m, 20)) * 40 + 1).astype(np.int64)
    counts = -np.sort(-counts, axis=1)
    series = rng.random(m) < 0.2
    rating = rng.uniform(2.5, 4.9, size=m)
    ratings_count = (rng.pareto(1.0, size=m) * 50).astype(np.int64)
    year = rng.integers(1900, 2018, size=m)
    pages = rng.integers(40, 1200, size=m)
    author = rng.integers(1, 800_000, size=m)
    lines = []
    for j in range(m):
        i = int(ids[j])
        bid = _book_id(i)
        short = " ".join(title_words[t_off[j]:t_off[j + 1]]).title()
        if variant:
            short = f"{short} (Revised {variant})"
        title = f"{short} ({shelves[community[j] % len(shelves)].title()}, #{j % 9 + 1})" if series[j] else short
        desc = " ".join(desc_words[d_off[j]:d_off[j + 1]]).capitalize() + "."
        shelf_json = ", ".join(f'{{"count": "{counts[j, k]}", "name": "{shelves[shelf_idx[j, k]]}"}}'
                               for k in range(n_shelves[j]))
        similar = ", ".join(f'"{_book_id(t)}"' for t in dict.fromkeys(links[j].tolist()) if t != i)
        lines.append(
            f'{{"isbn": "", "text_reviews_count": "{ratings_count[j] // 20}", "series": [], "country_code": "US", '
            f'"language_code": "eng", "popular_shelves": [{shelf_json}], "asin": "", "is_ebook": "false", '
            f'"average_rating": "{rating[j]:.2f}", "kindle_asin": "", "similar_books": [{similar}], '
            f'"description": "{desc}", "format": "Paperback", '
            f'"link": "https://www.goodreads.com/book/show/{bid}", '
            f'"authors": [{{"author_id": "{author[j]}", "role": ""}}], "publisher": "", "num_pages": "{pages[j]}", '
            f'"publication_day": "", "isbn13": "", "publication_month": "", "edition_information": "", '
            f'"publication_year": "{year[j]}", "url": "https://www.goodreads.com/book/show/{bid}", '
            f'"image_url": "{IMAGE_BASE}/images/goodreads/{bid}.png", "book_id": "{bid}", '
            f'"ratings_count": "{ratings_count[j]}", "work_id": "{i + 50_000_000}", "title": "{title}", '
            f'"title_without_series": "{short}"}}')
    return lines


def _write_chunk(path: str, lo: int, hi: int, n: int, seed: int) -> tuple[str, int]:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
        for start in range(lo, hi, 20_000):
            gz.write(("\n".join(_records(np.arange(start, min(hi, start + 20_000)), n, seed)) + "\n").encode())
    return path, os.path.getsize(path)


def generate_dump(out: Path, n: int, seed: int, workers: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = max(1, min(16, n // 150_000 + 1))
    bounds = np.linspace(0, n, files + 1).astype(int)
    with ProcessPoolExecutor(workers) as pool:
        jobs = [pool.submit(_write_chunk, str(out / f"goodreads_books-{k:03d}.json.gz"), int(bounds[k]),
                            int(bounds[k + 1]), n, seed) for k in range(files)]
        return [Path(j.result()[0]) for j in jobs]


def generate_delta(out: Path, n: int, seed: int, fraction: float = 0.01, night: int = 1) -> dict:
    """1% of n: 40% new books (ids n.. on the first night, past the earlier nights' after that), 50%
    changed books (new title, description and links), and 10% removed books (ids only: delta mode cannot
    express a removal). ``night`` k > 1: another night's delta, other books, titles revised k times."""
    k = max(3, int(n * fraction))
    rng = np.random.default_rng([seed, 99] if night == 1 else [seed, 99, night])
    n_new, n_removed = int(k * 0.4), max(1, int(k * 0.1))
    n_changed = k - n_new - n_removed
    picked = rng.choice(n, size=n_changed + n_removed, replace=False)
    changed, removed = np.sort(picked[:n_changed]), np.sort(picked[n_changed:])
    first_new = n + (night - 1) * k
    lines = _records(np.arange(first_new, first_new + n_new), first_new + n_new, seed + night) + \
        _records(changed, n, seed, variant=night)
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", compresslevel=6) as fh:
        fh.write("\n".join(lines) + "\n")
    return {"new": n_new, "changed": n_changed, "removed": n_removed, "lines": len(lines),
            "removed_ids": [f"goodreads:{_book_id(i)}" for i in removed[:20]]}


# ---- measuring a stage -------------------------------------------------------------------------
def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def stage_env(storage_root: str) -> dict:
    """The environment every measured stage runs with (the Spark driver sized for 2.4M nodes)."""
    env = dict(os.environ, G2I_STORAGE_ROOT=storage_root, PYSPARK_PYTHON=str(ROOT / ".venv" / "bin" / "python"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.setdefault("G2I_SPARK_DRIVER_MEMORY", "8g")
    env.setdefault("G2I_SPARK_SHUFFLE_PARTITIONS", "8")
    return env


def run_measured(name: str, argv: list[str], env: dict, log_path: Path) -> dict:
    """Run one stage's command line; wall, CPU of the whole tree (RUSAGE_CHILDREN delta: every
    descendant is waited for by its parent, so the JVM's time lands here), peak tree RSS."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        log.write(f"\n==== {name}: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        ps = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss(ps))
            time.sleep(0.5)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = {"stage": name, "rc": proc.returncode, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
              "peak_rss_mb": round(peak / 2**20), "load_avg": [round(x, 2) for x in os.getloadavg()]}
    print(f"[scale] {name}: rc={proc.returncode} wall {wall:.1f}s cpu {cpu:.1f}s peak {peak / 2**20:.0f} MiB",
          flush=True)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        result["error_tail"] = "\n".join(tail)
    return result


def _published_bytes(storage, table: str, run_id: str) -> int | None:
    try:
        manifest = storage.manifest(table, run_id)
    except Exception:  # noqa: BLE001 - a table the stage does not publish in this mode
        return None
    total = 0
    for uri in storage.manifest_files(manifest):
        bucket, key = storage._split_s3(uri)
        total += storage.s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    return total


def run_stage(stage: str, values: dict, settings, env: dict, log_path: Path, storage, extra_args=()) -> dict:
    from g2i_core.orchestration.stages import stage_argv

    argv = stage_argv(stage, values, settings) + list(extra_args)
    result = run_measured(stage, argv, env, log_path)
    sizes = {t: _published_bytes(storage, t, values["run_id"]) for t in STAGE_TABLES.get(stage, ())}
    result["output_mb"] = round(sum(v for v in sizes.values() if v) / 2**20, 1)
    result["tables_mb"] = {t: round(v / 2**20, 1) for t, v in sizes.items() if v is not None}
    try:
        result["rows"] = storage.manifest(STAGE_TABLES[stage][0], values["run_id"])["rows"]
    except Exception:  # noqa: BLE001
        result["rows"] = None
    return result


# ---- image fetch on a slice ----------------------------------------------------------------------
def measure_fetch(n_slice: int, settings, env: dict, log_path: Path, latency_ms: float,
                  processes: int = 0) -> dict:
    """fetch-images of ``n_slice`` nodes from the loopback sample server (``latency_ms`` per request) into a
    fresh prefix (no dedupe hits); ``processes`` as ``--processes`` (0: the default, auto)."""
    import pyarrow as pa

    from g2i_core.sample.server import ImageServer
    from g2i_core.sample.styles import encode_png
    from g2i_core.storage import Storage

    root = settings.storage_root.rstrip("/") + f"/fetch-slice-p{processes}"
    storage = Storage.from_settings(settings, root=root)
    with tempfile.TemporaryDirectory(prefix="g2i-scale-img-") as tmp:
        img_dir = Path(tmp) / "images" / "goodreads"
        img_dir.mkdir(parents=True)
        rng = np.random.default_rng(5)
        tiles = rng.integers(0, 256, size=(n_slice, 4, 4, 3), dtype=np.uint8)
        for i in range(n_slice):  # distinct covers (no dedupe hits), 48x48, a few hundred bytes each
            (img_dir / f"{_book_id(i)}.png").write_bytes(encode_png(np.kron(tiles[i], np.ones((12, 12, 1),
                                                                                             np.uint8))))
        # the server's own latency (a threaded handler sleeps per request), as bench/bench_fetch.py uses it
        with ImageServer(tmp, port=0, slow_seconds=2.0, latency_s=latency_ms / 1000) as server:
            ids = [f"goodreads:{_book_id(i)}" for i in range(n_slice)]
            urls = [f"{server.base_url}/images/goodreads/{_book_id(i)}.png" for i in range(n_slice)]
            storage.publish_table("nodes", pa.table({"node_id": ids, "image_url": urls,
                                                     "has_real_image": [True] * n_slice}), "fetch-slice")
            fenv = dict(env, G2I_FETCH_ALLOW_HOSTS=f"127.0.0.1:{server.port}")
            values = {"graph_root": root, "run_id": "fetch-slice"}
            # the slice is one host, and the default politeness limit (20 requests/s per host) would be all it
            # measured: off here, as in bench/bench_fetch.py; a real dump spreads over its CDN's hosts
            result = run_stage("fetch-images", values, settings, fenv, log_path, storage,
                               extra_args=("--per-host-rate", "0", "--processes", str(processes)))
            result["processes_used"] = storage.manifest("node_images", "fetch-slice")["extra"]["report"]["processes"]
    result["nodes"] = n_slice
    result["latency_ms"] = latency_ms
    result["fetches_per_s"] = round(n_slice / result["wall_s"], 1) if result["wall_s"] else None
    result["per_host_rate"] = 0
    result["processes"] = processes
    return result


# ---- the run ----------------------------------------------------------------------------------------
def _label(n: int) -> str:
    return "" if n == 2_400_000 else f"_{n // 1000}k" if n % 1000 == 0 else f"_{n}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2_400_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="dump generator processes")
    parser.add_argument("--fetch-nodes", type=int, default=50_000, help="image-fetch slice (0: skip)")
    parser.add_argument("--fetch-latency-ms", type=float, default=20.0)
    parser.add_argument("--fetch-only", metavar="PROCESSES", default=None,
                        help="only the image-fetch slice, once per comma-separated --processes value in one run "
                             "(e.g. 1,0: one process vs the default); writes scale_fetch.{md,json}")
    parser.add_argument("--rerun-delta", metavar="STORAGE_ROOT", default=None,
                        help="only the nightly delta's stages again, on the storage root an earlier full run left "
                             "(e.g. s3://g2i/bench-scale/n2400000-<ts>): today's code on the same data; "
                             "writes scale_delta_rerun.{md,json}")
    parser.add_argument("--next-delta", metavar="DATE", default=None,
                        help="with --rerun-delta: a further night instead of a rerun, dated DATE (e.g. 2026-11-03): "
                             "a fresh 1%% delta on top of the live version through the same stages (its titles are "
                             "new to the embedding cache, and ppr refreshes the last night's refresh); writes "
                             "scale_delta_<DATE>.{md,json}")
    parser.add_argument("--work-dir", default=None, help="local folder for the dump (default: a temp dir)")
    parser.add_argument("--skip-delta", action="store_true")
    parser.add_argument("--out", default=None, help="results name (default scale[_<n>k])")
    args = parser.parse_args(argv)

    if args.next_delta and not args.rerun_delta:
        parser.error("--next-delta needs --rerun-delta STORAGE_ROOT (the run to continue)")
    name = args.out or ("scale_fetch" if args.fetch_only else f"scale_delta_{args.next_delta}" if args.next_delta
                        else "scale_delta_rerun" if args.rerun_delta else f"scale{_label(args.nodes)}")
    bucket_root = os.environ.get("G2I_STORAGE_ROOT", "s3://g2i").rstrip("/")
    storage_root = args.rerun_delta.rstrip("/") if args.rerun_delta else \
        f"{bucket_root}/bench-scale/n{args.nodes}-{int(time.time())}"
    env = stage_env(storage_root)
    os.environ.update({k: env[k] for k in ("G2I_STORAGE_ROOT", "G2I_SPARK_DRIVER_MEMORY",
                                           "G2I_SPARK_SHUFFLE_PARTITIONS")})
    subprocess.run([str(ROOT / ".venv" / "bin" / "g2i"), "s3", "start"], check=True, env=env)

    from g2i_core.config import Settings
    from g2i_core.orchestration import graph_root
    from g2i_core.orchestration.planning import delta_uri, run_id_for
    from g2i_core.storage import Storage

    settings = Settings.load()
    root = graph_root(settings.storage_root, "goodreads")
    storage = Storage.from_settings(settings, root=root)
    top = Storage.from_settings(settings)
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / f"{name}.log"
    log_path.write_text("")
    report: dict = {"nodes": args.nodes, "seed": args.seed, "storage_root": storage_root, "cpus": os.cpu_count(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "command": f".venv/bin/python bench/bench_scale.py --nodes {args.nodes}", "full": [], "delta": []}

    def save():
        report["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2))
        (RESULTS / f"{name}.md").write_text(render_md(report))

    if args.fetch_only:
        report["command"] = (f".venv/bin/python bench/bench_scale.py --fetch-only {args.fetch_only} "
                             f"--fetch-nodes {args.fetch_nodes}")
        report["fetch_runs"] = []
        for processes in (int(p) for p in args.fetch_only.split(",")):
            report["fetch_runs"].append(measure_fetch(args.fetch_nodes, settings, env, log_path,
                                                      args.fetch_latency_ms, processes))
            save()
        report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        save()
        print(f"[scale] wrote {RESULTS / (name + '.md')}")
        return 0 if all(r["rc"] == 0 for r in report["fetch_runs"]) else 1

    if args.rerun_delta:
        report["command"] = f".venv/bin/python bench/bench_scale.py --rerun-delta {storage_root}"
        report["nodes"] = storage.manifest("nodes")["rows"]
        ds2 = args.next_delta or "2026-11-02"
        values2 = {"source": "goodreads", "raw": delta_uri(settings.storage_root, "goodreads", ds2), "mode": "delta",
                   "ds": ds2, "run_id": run_id_for("goodreads", ds2), "graph_root": root, "incremental": True}
        report["rerun_of"] = values2["run_id"]
        if args.next_delta:  # a new night: its delta generated and dropped where `plan` looks for it
            import datetime

            report["command"] += f" --next-delta {ds2}"
            night = (datetime.date.fromisoformat(ds2) - datetime.date(2026, 11, 1)).days
            base_nodes = storage.manifest("nodes", run_id_for("goodreads", "2026-11-01"))["rows"]
            with tempfile.TemporaryDirectory(prefix="g2i-scale-", dir=args.work_dir) as tmp:
                delta_file = Path(tmp) / "goodreads_books.json.gz"
                report["delta_content"] = generate_delta(delta_file, base_nodes, args.seed, night=night)
                top.put_bytes(f"{values2['raw']}/{delta_file.name}", delta_file.read_bytes(), "application/gzip")
            report["next_delta"] = ds2
        for stage in ("ingest", "build-graph", "ppr", "embed", "rerank"):
            report["delta"].append(run_stage(stage, values2, settings, env, log_path, storage))
            save()
            if report["delta"][-1]["rc"] != 0:
                break
        report["delta_embed_stats"] = storage.manifest("embeddings", values2["run_id"])["extra"].get("stats")
        report["delta_ppr_extra"] = _ppr_extra(storage, values2["run_id"])
        report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        save()
        print(f"[scale] wrote {RESULTS / (name + '.md')}")
        return 0 if all(r["rc"] == 0 for r in report["delta"]) else 1

    with tempfile.TemporaryDirectory(prefix="g2i-scale-", dir=args.work_dir) as tmp:
        # 1. the dump, uploaded under raw/
        t0 = time.monotonic()
        files = generate_dump(Path(tmp) / "dump", args.nodes, args.seed, args.workers)
        gen_s = time.monotonic() - t0
        raw_prefix = top.uri("raw", "scale", "goodreads")
        size = 0
        for f in files:
            top.put_bytes(f"{raw_prefix}/{f.name}", f.read_bytes(), "application/gzip")
            size += f.stat().st_size
        report["dump"] = {"files": len(files), "gz_mb": round(size / 2**20, 1), "generate_s": round(gen_s, 1),
                          "upload_s": round(time.monotonic() - t0 - gen_s, 1)}
        print(f"[scale] dump: {len(files)} files, {size / 2**20:.0f} MiB gz, generated in {gen_s:.0f}s", flush=True)
        save()

        # 2. full build: what mmag_refresh runs for a changed full dump (fetch-images measured apart)
        ds = "2026-11-01"
        values = {"source": "goodreads", "raw": raw_prefix, "mode": "full", "ds": ds,
                  "run_id": run_id_for("goodreads", ds), "graph_root": root}
        for stage in ("ingest", "build-graph", "ppr", "embed", "rerank"):
            report["full"].append(run_stage(stage, values, settings, env, log_path, storage))
            save()
            if report["full"][-1]["rc"] != 0:
                break

        # 3. image fetch on a slice
        if args.fetch_nodes:
            report["fetch"] = measure_fetch(min(args.fetch_nodes, args.nodes), settings, env, log_path,
                                            args.fetch_latency_ms)
            save()

        # 4. the nightly 1% delta, dropped where `plan` looks for it
        full_ok = all(r["rc"] == 0 for r in report["full"])
        if not args.skip_delta and full_ok:
            ds2 = "2026-11-02"
            delta_file = Path(tmp) / "delta" / "goodreads_books.json.gz"
            report["delta_content"] = generate_delta(delta_file, args.nodes, args.seed)
            prefix = delta_uri(settings.storage_root, "goodreads", ds2)
            top.put_bytes(f"{prefix}/{delta_file.name}", delta_file.read_bytes(), "application/gzip")
            # as plan_source plans a delta night: ppr refreshes the full build's candidates
            values2 = dict(values, raw=prefix, mode="delta", ds=ds2, run_id=run_id_for("goodreads", ds2),
                           incremental=True)
            for stage in ("ingest", "build-graph", "ppr", "embed", "rerank"):
                report["delta"].append(run_stage(stage, values2, settings, env, log_path, storage))
                save()
                if report["delta"][-1]["rc"] != 0:
                    break
            try:
                report["delta_embed_stats"] = storage.manifest("embeddings", values2["run_id"])["extra"]["stats"]
                report["delta_ppr_extra"] = _ppr_extra(storage, values2["run_id"])
            except Exception:  # noqa: BLE001
                pass
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save()
    print(f"[scale] wrote {RESULTS / (name + '.md')}")
    return 0 if all(r["rc"] == 0 for r in report["full"] + report["delta"]) else 1


def _ppr_extra(storage, run_id: str) -> dict:
    """What the delta's ppr did: the method and its incremental stats (or why it computed every source)."""
    extra = storage.manifest("ppr_candidates", run_id)["extra"]
    return {k: v for k, v in extra.items() if k in ("auto", "incremental")}


def render_fetch_md(report: dict) -> str:
    runs = report["fetch_runs"]
    base = runs[0]["fetches_per_s"] if runs and runs[0]["rc"] == 0 else None
    lines = ["# Image fetch at scale: one slice, several process counts", "",
             f"`{report['command']}` ({report['cpus']} CPUs; started {report['started']}; load average at the end "
             f"{report.get('load_avg_end')}). Each row is `g2i fetch-images` (the command line mmag_refresh runs) of "
             "the same number of distinct 48x48 PNGs from the loopback image server, with its latency per "
             "request, into a fresh prefix of the local S3 server (no dedupe hits), per-host rate limit off "
             "(one host). Wall includes the process start, reading nodes and publishing node_images. CPU = "
             "user+sys of the stage's process tree (the image server and the S3 server are not in it).", "",
             "| --processes | used | nodes | latency ms | rc | wall s | fetches/s | vs first row | CPU s "
             "| CPU ms/fetch | peak RSS MiB |", "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        ratio = f"{r['fetches_per_s'] / base:.2f}×" if base and r["fetches_per_s"] else ""
        lines.append(f"| {r['processes'] or 'auto'} | {r.get('processes_used')} | {r['nodes']:,} | {r['latency_ms']} "
                     f"| {r['rc']} | {r['wall_s']} | {r['fetches_per_s']} | {ratio} | {r['cpu_s']} "
                     f"| {1000 * r['cpu_s'] / r['nodes']:.2f} | {r['peak_rss_mb']} |")
    return "\n".join(lines) + "\n"


def render_md(report: dict) -> str:
    if "fetch_runs" in report:
        return render_fetch_md(report)
    n = report["nodes"]
    if report.get("rerun_of"):
        rows = report["delta"]
        total = sum(r["wall_s"] for r in rows)
        if report.get("next_delta"):
            d = report["delta_content"]
            intro = [f"# Scale: another nightly delta ({report['next_delta']}) on {n:,} books", "",
                     f"`{report['command']}` ({report['cpus']} CPUs; started {report['started']}; load average at "
                     f"the end {report.get('load_avg_end')}). A fresh 1% delta ({d['new']:,} new, {d['changed']:,} "
                     f"changed and {d['removed']:,} removed books) on top of the live version an earlier run of "
                     "bench_scale.py left in the local S3 server, through the nightly path with the code of the "
                     "day: its titles are new to the embedding cache, and ppr refreshes the last night's version.",
                     ""]
        else:
            intro = [f"# Scale: the nightly delta's stages rerun on {n:,} books", "",
                     f"`{report['command']}` ({report['cpus']} CPUs; started {report['started']}; load average at "
                     f"the end {report.get('load_avg_end')}). The delta run `{report['rerun_of']}` again, on the "
                     "data an earlier full run of bench_scale.py left in the local S3 server, with the code of the "
                     "day. Every stage replaces its own run. The titles the delta changed were encoded by the first "
                     "run of this delta, so embed finds them in its cache now: that stage reads and writes the 2.4M "
                     "cached vectors but encodes none (it encoded 21,473 in 50 s the first time).", ""]
        out = intro + [
               "| stage | rc | wall s | CPU s | peak RSS MiB | output MiB | rows | load avg |",
               "|---|---|---:|---:|---:|---:|---:|---|"]
        out += [f"| {r['stage']} | {r['rc']} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mb']} | "
                f"{r.get('output_mb')} | {r.get('rows')} | {r['load_avg'][0]} |" for r in rows]
        out += ["", f"Total {total:.0f} s ({total / 60:.1f} min) against ≤ {TARGET_DELTA_S // 60} min.", "",
                f"Delta embed: {report.get('delta_embed_stats')}", "",
                f"Delta ppr: {report.get('delta_ppr_extra')}", ""]
        return "\n".join(out)
    lines = [f"# Scale: {n:,} Goodreads-format books, end to end", "",
             f"`{report['command']}` ({report['cpus']} CPUs; started {report['started']}; load average at the end "
             f"{report.get('load_avg_end')}). Each stage is the command line mmag_refresh runs "
             "(g2i_core/orchestration/stages.py), on the local S3 server. CPU = user+sys of the stage's process "
             "tree (Spark JVM included); RSS = peak of the tree, sampled every 0.5 s; output = Parquet bytes of "
             "the tables the stage published.", ""]
    if n != 2_400_000:
        lines += [f"**Smaller run ({n:,} nodes), not the 2.4M target size.** Extrapolation below is linear in n.", ""]
    dump = report.get("dump")
    if dump:
        lines += [f"Dump: {dump['files']} files, {dump['gz_mb']} MiB gzip, generated in {dump['generate_s']} s, "
                  f"uploaded in {dump['upload_s']} s.", ""]

    def table(rows, title, target_s):
        out = [f"## {title}", "", "| stage | rc | wall s | CPU s | peak RSS MiB | output MiB | rows | load avg |",
               "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            out.append(f"| {r['stage']} | {r['rc']} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mb']} | "
                       f"{r.get('output_mb')} | {r.get('rows')} | {r['load_avg'][0]} |")
        total = sum(r["wall_s"] for r in rows)
        ok = rows and all(r["rc"] == 0 for r in rows)
        scale = 2_400_000 / n
        verdict = ("met" if total <= target_s else "missed") if ok else "not run to the end"
        out += ["", f"Total {total:.0f} s ({total / 60:.1f} min) against ≤ {target_s // 60} min: **{verdict}**"
                + ("" if n == 2_400_000 else f" at {n:,} nodes; linear extrapolation to 2.4M: "
                   f"{total * scale / 60:.0f} min"
                   f" (largest: {max(rows, key=lambda r: r['wall_s'])['stage']})" if rows else ""), ""]
        for r in rows:
            if r.get("error_tail"):
                out += [f"{r['stage']} failed:", "```", r["error_tail"][-3000:], "```", ""]
        return out

    lines += table(report["full"], "Full build (image download excluded)", TARGET_FULL_S)
    if report.get("fetch"):
        f = report["fetch"]
        lines += ["## Image fetch (apart)", "",
                  f"fetch-images of {f['nodes']:,} nodes from the loopback server with {f['latency_ms']} ms latency: "
                  f"rc {f['rc']}, {f['wall_s']} s wall ({f['fetches_per_s']} fetches/s), CPU {f['cpu_s']} s, "
                  f"peak RSS {f['peak_rss_mb']} MiB. One host, so the per-host rate limit is off "
                  "(`--per-host-rate 0`; the default, 20/s per host, would cap it).", ""]
    if report.get("delta_content"):
        d = report["delta_content"]
        lines += [f"Delta: {d['new']} new, {d['changed']} changed books ({d['lines']} lines); {d['removed']} removed "
                  "books cannot be expressed in delta mode (it only adds or replaces, docs/ingest.md) and "
                  "leave with the next full dump.", ""]
    if report["delta"]:
        lines += table(report["delta"], "Nightly 1% delta", TARGET_DELTA_S)
    if report.get("delta_embed_stats"):
        lines += [f"Delta embed: {report['delta_embed_stats']}", ""]
    if report.get("delta_ppr_extra"):
        lines += [f"Delta ppr: {report['delta_ppr_extra']}", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
