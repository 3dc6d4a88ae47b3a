"""Index search at scale (issue 11, part 1, first benchmark): exact vs approximate indexes
over synthetic galleries that match real LFW templates of the default embedding space.

Run by hand:

    .venv/bin/python benchmarks/bench_index_scale.py --sizes 10000 100000 1000000

(``--sizes ... 10000000`` adds 10M: it needs ~10 GB for the gallery alone plus each index,
and the HNSW/IVF builds take a long time on 2 cores; not run on the 24 GiB dev machine.)

1. Real structure: the LFW templates of the default space (``dlib+sface``, 256-d fused,
   L2-normalised float32) from the eval embedding cache (``~/.cache/faceledger/eval``,
   written by ``faceledger eval ...``); without a cache, ``--embed N`` embeds N LFW images
   with the product pipeline. From them: the global mean, the within-identity covariance
   (residuals about each identity's mean, identities with >= 2 images) and the
   between-identity covariance (total minus within).
2. Synthetic gallery of N templates: identities drawn as centre = mean + Gaussian with the
   real between-identity covariance, templates = centre + Gaussian with the real
   within-identity covariance, renormalised; templates per identity drawn from LFW's own
   counts (capped at 50). Real vs synthetic impostor and genuine score summaries are
   printed so that a reader sees whether they match.
3. Probes: half mated (a fresh template of a gallery identity), half non-mated (a fresh
   identity), ``--probes`` in all.
4. For each N, indexes: exact ``IndexIDMap2(IndexFlatIP)`` (the product's ``faiss-flat``),
   the same exact search split in 2 shards searched in parallel (2 threads only), HNSW
   (``IndexHNSWFlat``, M=32, efConstruction 40) at several efSearch, IVF-SQ8 with exact
   re-ranking (``IndexRefineFlat(IndexIVFScalarQuantizer)``, nlist ~ 4 sqrt N, k_factor 8)
   at several nprobe. Per single-probe query (``search`` of one vector, k=10) with 1 and
   with 2 OpenMP threads: latency p50/p95/p99, recall@1 and recall@10 against exact (the
   exact top-k of the same gallery), bytes per template held by the index structure, and
   build (train + add) time.

Prints a table and JSON to benchmarks/results/index-scale-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parents[1]
DIM = 256
K = 10
_KEEP: list[Any] = []
F32 = NDArray[np.float32]


# ---------------------------------------------------------------- real templates

def load_real(cache_dir: Path, embed: int, lfw: Path) -> tuple[F32, NDArray[np.int64], str]:
    from faceledger.eval.embeddings import EmbeddingCache
    from faceledger.vision.embedders import embedder_spec
    from faceledger.vision.pipeline import PipelineConfig

    config = PipelineConfig()
    space = embedder_spec(config.embedder).space
    cache = None
    for f in sorted(cache_dir.glob("embeddings-*.npz")):
        c = EmbeddingCache.load(f)
        lfw_like = len(c.paths) and "/" in str(c.paths[0]) and c.vectors.shape[1] == DIM
        if c.space == space and lfw_like and (cache is None or len(c.paths) > len(cache.paths)):
            cache, source = c, f"eval cache {f}"
    if cache is None:
        if embed <= 0:
            raise SystemExit(f"no LFW {space} cache in {cache_dir}; pass --embed 400")
        from faceledger.eval.embeddings import embed_folder
        people = sorted(p for p in lfw.iterdir() if p.is_dir() and len(list(p.iterdir())) >= 2)
        files: list[Path] = []
        for p in people:
            files.extend(sorted(p.iterdir())[:4])
            if len(files) >= embed:
                break
        cache = embed_folder(lfw, files, config, workers=2)
        source = f"embedded {len(files)} LFW images with build_pipeline(PipelineConfig())"
    keep = cache.has_face()
    x = np.ascontiguousarray(cache.vectors[keep], dtype=np.float32)
    names = np.array([str(p).split("/")[0] for p in cache.paths[keep]])
    _, labels = np.unique(names, return_inverse=True)
    return x, labels.astype(np.int64), source


class Model:
    """Gaussian per-identity cluster model of the real templates."""

    def __init__(self, x: F32, labels: NDArray[np.int64]) -> None:
        self.mean = x.mean(0).astype(np.float64)
        ids, counts = np.unique(labels, return_counts=True)
        self.counts = counts
        multi = np.isin(labels, ids[counts >= 2])
        xm, lm = x[multi].astype(np.float64), labels[multi]
        centres = np.zeros((labels.max() + 1, x.shape[1]))
        np.add.at(centres, lm, xm)
        n = np.bincount(lm, minlength=labels.max() + 1)
        centres[n > 0] /= n[n > 0, None]
        resid = xm - centres[lm]
        dof = len(xm) - int((n > 0).sum())
        self.within = resid.T @ resid / dof
        xc = x.astype(np.float64) - self.mean
        total = xc.T @ xc / (len(x) - 1)
        self.between = total - self.within
        self.lw = _sqrt_psd(self.within)
        self.lb = _sqrt_psd(self.between)
        self.trace_within = float(np.trace(self.within))
        self.trace_between = float(np.trace(self.between))

    def centres(self, n: int, rng: np.random.Generator) -> F32:
        z = rng.standard_normal((n, DIM), dtype=np.float32)
        return (self.mean.astype(np.float32) + z @ self.lb.T.astype(np.float32))

    def templates(self, centres: F32, rng: np.random.Generator) -> F32:
        z = rng.standard_normal(centres.shape, dtype=np.float32)
        t = centres + z @ self.lw.T.astype(np.float32)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        return t

    def chunks(self, n: int, rng: np.random.Generator, mated: int, step: int = 200_000
               ) -> tuple[Any, F32]:
        """A gallery of ``n`` drawn ``step`` templates at a time (never held whole), and
        the centres of ``mated`` of its identities (for mated probes)."""
        keep = np.empty((0, DIM), dtype=np.float32)

        def gen() -> Any:
            nonlocal keep
            done = 0
            while done < n:
                counts = np.minimum(rng.choice(self.counts, size=step), 50)
                cum = np.cumsum(counts)
                n_id = int(np.searchsorted(cum, min(step, n - done)) + 1)
                counts = counts[:n_id]
                counts[-1] -= int(cum[n_id - 1] - min(step, n - done))
                centres = self.centres(n_id, rng)
                if not len(keep):
                    keep = centres[rng.choice(n_id, size=mated, replace=False)]
                chunk = self.templates(np.repeat(centres, counts, axis=0), rng)
                yield chunk
                done += len(chunk)

        it = gen()
        first = next(it)

        def all_chunks() -> Any:
            yield first
            yield from it

        return all_chunks(), keep

    def gallery(self, n: int, rng: np.random.Generator) -> tuple[F32, NDArray[np.int64], F32]:
        counts = np.minimum(rng.choice(self.counts, size=n), 50)
        cum = np.cumsum(counts)
        n_id = int(np.searchsorted(cum, n) + 1)
        counts = counts[:n_id]
        counts[-1] -= int(cum[n_id - 1] - n)
        labels = np.repeat(np.arange(n_id), counts)
        centres = self.centres(n_id, rng)
        out = np.empty((n, DIM), dtype=np.float32)
        step = 200_000
        for s in range(0, n, step):
            out[s:s + step] = self.templates(centres[labels[s:s + step]], rng)
        return out, labels, centres


def _sqrt_psd(c: NDArray[np.float64]) -> NDArray[np.float64]:
    w, v = np.linalg.eigh((c + c.T) / 2)
    out: NDArray[np.float64] = v * np.sqrt(np.clip(w, 0, None))
    return out


def score_summary(x: F32, labels: NDArray[np.int64], rng: np.random.Generator,
                  sample: int = 3000) -> dict[str, float]:
    pick = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    xs, ls = x[pick], labels[pick]
    s = xs @ xs.T
    iu = np.triu_indices(len(xs), 1)
    same = ls[iu[0]] == ls[iu[1]]
    imp = s[iu][~same]
    # genuine: all pairs within identities (from the whole set, capped)
    gen = []
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for grp in np.split(order, bounds):
        if len(grp) >= 2:
            g = x[grp[:20]]
            gs = g @ g.T
            gen.append(gs[np.triu_indices(len(g), 1)])
        if sum(len(a) for a in gen) > 200_000:
            break
    gen_a = np.concatenate(gen)
    return {"impostor_pairs": len(imp), "impostor_mean": float(imp.mean()),
            "impostor_std": float(imp.std()), "impostor_p99": float(np.percentile(imp, 99)),
            "impostor_p99.9": float(np.percentile(imp, 99.9)),
            "impostor_p99.99": float(np.percentile(imp, 99.99)),
            "genuine_pairs": len(gen_a), "genuine_mean": float(gen_a.mean()),
            "genuine_std": float(gen_a.std()), "genuine_p1": float(np.percentile(gen_a, 1))}


# ---------------------------------------------------------------- indexes

def _vec_bytes(v: Any) -> int:
    return int(v.size()) * int(v.itemsize if hasattr(v, "itemsize") else 4)


def build_flat(x: F32) -> tuple[Any, float, float]:
    t = time.perf_counter()
    idx = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    idx.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    dt = time.perf_counter() - t
    # codes + id_map (int64) ; the rev_map hash (~40 B/entry in libstdc++) not counted
    return idx, dt, 4 * DIM + 8


def build_shards(x: F32) -> tuple[Any, float, float]:
    t = time.perf_counter()
    idx = faiss.IndexShards(DIM, True, True)  # threaded, successive ids
    half = len(x) // 2
    parts = []
    for part in (x[:half], x[half:]):
        f = faiss.IndexFlatIP(DIM)
        f.add(part)
        parts.append(f)
        idx.add_shard(f)
    _KEEP.append(parts)  # keep the shards' Python objects alive
    return idx, time.perf_counter() - t, 4 * DIM


def build_hnsw(x: F32, m: int, budget_s: float) -> tuple[Any, float, float, int, float]:
    """Adds in chunks; stops when the projected build exceeds ``budget_s``. Returns
    (index, seconds, bytes/template, vectors added, projected seconds for all)."""
    idx = faiss.IndexHNSWFlat(DIM, m, faiss.METRIC_INNER_PRODUCT)
    idx.hnsw.efConstruction = 40
    chunk = 50_000
    t = time.perf_counter()
    added = 0
    projected = 0.0
    for s in range(0, len(x), chunk):
        idx.add(x[s:s + chunk])
        added = idx.ntotal
        el = time.perf_counter() - t
        projected = el / added * len(x) * math.log(len(x)) / math.log(max(added, 2))
        if added < len(x) and projected > budget_s:
            break
    dt = time.perf_counter() - t
    h = idx.hnsw
    struct = (h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4
              + 4 * DIM * idx.ntotal)
    return idx, dt, struct / idx.ntotal, added, projected


def build_ivf_sq8(x: F32, rng: np.random.Generator, k_factor: float
                  ) -> tuple[Any, float, float, int]:
    n = len(x)
    nlist = round(4 * math.sqrt(n))
    quant = faiss.IndexFlatIP(DIM)
    ivf = faiss.IndexIVFScalarQuantizer(quant, DIM, nlist, faiss.ScalarQuantizer.QT_8bit,
                                        faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    ivf.cp.min_points_per_centroid = 5
    ivf.cp.max_points_per_centroid = 32
    t = time.perf_counter()
    train = x[rng.choice(n, size=min(n, 32 * nlist), replace=False)]
    ivf.train(train)
    idx = faiss.IndexRefineFlat(ivf)
    idx.k_factor = k_factor
    idx.add(x)
    dt = time.perf_counter() - t
    struct = n * (ivf.code_size + 8) + nlist * DIM * 4 + n * 4 * DIM
    _KEEP.append((ivf, quant))
    return idx, dt, struct / n, nlist


def build_pq_refine(x: F32) -> tuple[Any, float]:
    """The product's own approximate backend (faceledger.index.faiss_pq)."""
    from faceledger.index.faiss_pq import FaissPQRefineIndex

    t = time.perf_counter()
    idx = FaissPQRefineIndex(DIM, train_at=0, min_candidates=0)
    idx.add(np.arange(len(x), dtype=np.int64), x)
    idx.warm()  # train + encode, as a server's warm-up does
    return idx, time.perf_counter() - t


class _Adapter:
    """FAISS's search signature over a faceledger VectorIndex."""

    def __init__(self, index: Any) -> None:
        self.index = index

    def search(self, q: F32, k: int) -> tuple[Any, Any]:
        hits = self.index.search(q, k)
        return hits.scores, hits.ids


def single_probe(index: Any, probes: F32, threads: int) -> tuple[dict[str, float], NDArray[Any]]:
    faiss.omp_set_num_threads(threads)
    for q in probes[:10]:
        index.search(q[None], K)
    lat = np.empty(len(probes))
    out = np.empty((len(probes), K), dtype=np.int64)
    for i, q in enumerate(probes):
        t = time.perf_counter()
        _, ids = index.search(q[None], K)
        lat[i] = time.perf_counter() - t
        out[i] = ids[0]
    ms = lat * 1e3
    return ({"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
             "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}, out)


def recall(approx: NDArray[Any], exact: NDArray[Any], mated: int) -> dict[str, float]:
    """recall@1 / recall@10 against exact, over all probes and split into the ``mated``
    first probes (a mate in the gallery) and the non-mated rest."""
    hit1 = approx[:, 0] == exact[:, 0]
    hit10 = np.array([len(set(a) & set(e)) / K for a, e in zip(approx, exact, strict=True)])
    return {"recall@1": float(hit1.mean()), "recall@10": float(hit10.mean()),
            "recall@1_mated": float(hit1[:mated].mean()),
            "recall@10_mated": float(hit10[:mated].mean()),
            "recall@1_nonmated": float(hit1[mated:].mean()),
            "recall@10_nonmated": float(hit10[mated:].mean())}


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--stream-sizes", type=int, nargs="*", default=[],
                    help="sizes drawn in chunks into the PQ backend only (exact + PQ rows)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--ef", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 64, 256, 1024, 2048])
    ap.add_argument("--k-factor", type=float, default=8.0)
    ap.add_argument("--pq-k-factor", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--hnsw-budget-s", type=float, default=420.0,
                    help="stop adding to HNSW when the projected build exceeds this")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["flat", "shards", "hnsw", "ivf", "pq"])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/faceledger/eval")
    ap.add_argument("--embed", type=int, default=400,
                    help="LFW images to embed when no cache holds the default space")
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared/data/lfw")
    ap.add_argument("--no-real-check", dest="real_check", action="store_false",
                    help="skip the same indexes on the real LFW gallery vs synthetic")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    t0 = time.perf_counter()
    real, labels, source = load_real(args.cache, args.embed, args.lfw)
    model = Model(real, labels)
    print(f"real: {len(real)} templates, {labels.max() + 1} identities ({source}); "
          f"trace within {model.trace_within:.3f}, between {model.trace_between:.3f}")
    syn, syn_labels, _ = model.gallery(max(20_000, len(real)), rng)
    dist = {"real": score_summary(real, labels, rng),
            "synthetic": score_summary(syn, syn_labels, rng)}
    print(f"{'scores':10} {'imp mean':>9} {'imp std':>8} {'imp p99':>8} {'p99.9':>7} "
          f"{'p99.99':>7} {'gen mean':>9} {'gen std':>8}")
    for k, d in dist.items():
        print(f"{k:10} {d['impostor_mean']:9.4f} {d['impostor_std']:8.4f} "
              f"{d['impostor_p99']:8.4f} {d['impostor_p99.9']:7.4f} "
              f"{d['impostor_p99.99']:7.4f} {d['genuine_mean']:9.4f} {d['genuine_std']:8.4f}")
    del syn, syn_labels

    rows: list[dict[str, Any]] = []

    def emit_row(row: dict[str, Any]) -> None:
        rows.append(row)
        print(f"{row['gallery'][:9]:<9} {row['n']:>9,} {row['index']:<28} {row['threads']:>2}t "
              f"p50 {row['p50_ms']:7.2f}  p95 {row['p95_ms']:7.2f}  p99 {row['p99_ms']:7.2f} ms"
              f"  r@1 {row['recall@1']:.3f} r@10 {row['recall@10']:.4f} "
              f"(mated {row['recall@1_mated']:.3f}/{row['recall@10_mated']:.3f}, non-mated "
              f"{row['recall@1_nonmated']:.3f}/{row['recall@10_nonmated']:.3f})  "
              f"{row['bytes_per_template']:6.0f} B  build {row['build_s']:7.1f} s"
              + (f"  [{row['note']}]" if row.get("note") else ""), flush=True)

    stamp = datetime.now(UTC)
    out = args.out or REPO / "benchmarks" / "results" / f"index-scale-{stamp:%Y%m%d}.json"

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {"benchmark": "index-scale", "issue": 11, "date": stamp.isoformat(),
                  "machine": {"platform": platform.platform(),
                              "processor": platform.processor(), "cpus": os.cpu_count(),
                              "faiss": faiss.__version__, "numpy": np.__version__},
                  "args": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()},
                  "real_source": source, "real_templates": len(real),
                  "real_identities": int(labels.max() + 1),
                  "model": {"trace_within": model.trace_within,
                            "trace_between": model.trace_between},
                  "score_distributions": dist, "k": K, "rows": rows,
                  "complete": False, "seconds": time.perf_counter() - t0}
        out.write_text(json.dumps(result, indent=1) + "\n")

    def suite(n: int, gallery: F32, probes: F32, half: int, threads: list[int],
              kind: str) -> None:
        def emit(row: dict[str, Any]) -> None:
            emit_row({"gallery": kind, **row})

        flat, bt, bpt = build_flat(gallery)
        faiss.omp_set_num_threads(max(threads))
        _, exact = flat.search(probes, K)  # batched: BLAS ground truth
        if "flat" not in args.skip:
            for th in threads:
                lat, got = single_probe(flat, probes, th)
                emit({"n": n, "index": "exact flat (faiss-flat)", "threads": th, **lat,
                      **recall(got, exact, half),
                      "bytes_per_template": bpt, "build_s": bt})
        del flat
        if "shards" not in args.skip and max(threads) >= 2:
            sh, bt, bpt = build_shards(gallery)
            lat, got = single_probe(sh, probes, 2)
            emit({"n": n, "index": "exact flat, 2 shards", "threads": 2, **lat,
                  **recall(got, exact, half), "bytes_per_template": bpt, "build_s": bt})
            del sh
        if "hnsw" not in args.skip:
            faiss.omp_set_num_threads(max(threads))
            h, bt, bpt, added, projected = build_hnsw(gallery, args.hnsw_m, args.hnsw_budget_s)
            note = ""
            truth = exact
            if added < n:
                note = (f"partial: {added:,} of {n:,} added in {bt:.0f} s, full build "
                        f"projected {projected:.0f} s")
                f2 = faiss.IndexFlatIP(DIM)
                f2.add(gallery[:added])
                _, truth = f2.search(probes, K)
                del f2
            for ef in args.ef:
                h.hnsw.efSearch = ef
                for th in threads:
                    lat, got = single_probe(h, probes, th)
                    emit({"n": n, "index": f"HNSW M={args.hnsw_m} ef={ef}", "threads": th,
                          **lat, **recall(got, truth, half), "bytes_per_template": bpt,
                          "build_s": bt, "built": added, "note": note,
                          "build_projected_s": projected if added < n else bt})
            del h
        if "ivf" not in args.skip:
            faiss.omp_set_num_threads(max(threads))
            iv, bt, bpt, nlist = build_ivf_sq8(gallery, rng, args.k_factor)
            for npb in sorted({min(p, nlist) for p in args.nprobe}):
                faiss.downcast_index(iv.base_index).nprobe = npb
                for th in threads:
                    lat, got = single_probe(iv, probes, th)
                    emit({"n": n, "index": f"IVF{nlist}-SQ8+refine nprobe={npb}",
                          "threads": th, **lat, **recall(got, exact, half),
                          "bytes_per_template": bpt, "build_s": bt,
                          "k_factor": args.k_factor})
            del iv
        if "pq" not in args.skip:
            faiss.omp_set_num_threads(max(threads))
            pq, bt = build_pq_refine(gallery)
            bpt = 4 * DIM + 8 + DIM // 4 + 8  # full vectors + ids, 4-bit codes + ids
            for kf in args.pq_k_factor:
                pq.k_factor = kf
                for th in threads:
                    lat, got = single_probe(_Adapter(pq), probes, th)
                    emit({"n": n, "index": f"PQ{DIM // 2}x4fs+refine k_factor={kf} "
                          "(faiss-pq-refine)", "threads": th, **lat,
                          **recall(got, exact, half), "bytes_per_template": bpt,
                          "build_s": bt, "k_factor": kf})
            del pq

    if args.real_check:
        # the same indexes over the real LFW gallery and over a synthetic one of its size
        half = min(args.probes // 2, 100)
        ids, counts = np.unique(labels, return_counts=True)
        multi = np.flatnonzero(np.isin(labels, rng.choice(ids[counts >= 2], half, False)))
        first = multi[np.unique(labels[multi], return_index=True)[1]]
        single = rng.choice(np.flatnonzero(np.isin(labels, ids[counts == 1])), half, False)
        pick = np.concatenate([first, single])
        rprobes = np.ascontiguousarray(real[pick])
        rgal = np.ascontiguousarray(np.delete(real, pick, axis=0))
        print(f"--- real LFW gallery: {len(rgal):,} templates, {2 * half} real probes")
        suite(len(rgal), rgal, rprobes, half, [1], "real LFW")
        sgal, _, scent = model.gallery(len(rgal), rng)
        sprobes = np.vstack([model.templates(scent[rng.choice(len(scent), size=half)], rng),
                             model.templates(model.centres(half, rng), rng)])
        print("--- synthetic gallery of the same size")
        suite(len(sgal), sgal, np.ascontiguousarray(sprobes), half, [1], "synthetic")
        save()

    for n in args.stream_sizes:
        # Too large to hold twice: drawn in chunks straight into the product's PQ backend,
        # whose exact store gives the ground truth and the exact rows.
        from faceledger.index.faiss_pq import FaissPQRefineIndex

        faiss.omp_set_num_threads(max(args.threads))
        half = args.probes // 2
        tg = time.perf_counter()
        chunks, centres = model.chunks(n, rng, half)
        pq = FaissPQRefineIndex(DIM, train_at=0, min_candidates=0)
        start = 0
        for chunk in chunks:
            pq.add(np.arange(start, start + len(chunk), dtype=np.int64), chunk)
            start += len(chunk)
        t_add = time.perf_counter() - tg
        mated = model.templates(centres, rng)
        fresh = model.templates(model.centres(args.probes - half, rng), rng)
        probes = np.ascontiguousarray(np.vstack([mated, fresh]), dtype=np.float32)
        flat = pq._flat._index
        _, exact = flat.search(probes, K)
        print(f"--- N = {n:,} (streamed): drawn and added in {t_add:.0f} s", flush=True)
        for th in args.threads:
            lat, got = single_probe(flat, probes, th)
            emit_row({"gallery": "synthetic", "n": n, "index": "exact flat (faiss-flat)",
                      "threads": th, **lat, **recall(got, exact, half),
                      "bytes_per_template": 4 * DIM + 8, "build_s": t_add})
        tb = time.perf_counter()
        pq.warm()
        bt = time.perf_counter() - tb
        for kf in args.pq_k_factor:
            pq.k_factor = kf
            for th in args.threads:
                lat, got = single_probe(_Adapter(pq), probes, th)
                emit_row({"gallery": "synthetic", "n": n,
                          "index": f"PQ{DIM // 2}x4fs+refine k_factor={kf} (faiss-pq-refine)",
                          "threads": th, **lat, **recall(got, exact, half),
                          "bytes_per_template": 4 * DIM + 8 + DIM // 4 + 8, "build_s": bt,
                          "k_factor": kf})
        del pq, flat
        save()

    for n in args.sizes:
        faiss.omp_set_num_threads(max(args.threads))
        tg = time.perf_counter()
        gallery, glabels, centres = model.gallery(n, rng)
        half = args.probes // 2
        mated = model.templates(centres[rng.choice(len(centres), size=half)], rng)
        fresh = model.templates(model.centres(args.probes - half, rng), rng)
        probes = np.ascontiguousarray(np.vstack([mated, fresh]), dtype=np.float32)
        del centres, glabels
        print(f"--- N = {n:,}: gallery drawn in {time.perf_counter() - tg:.1f} s", flush=True)
        suite(n, gallery, probes, half, args.threads, "synthetic")
        del gallery
        save()

    save()
    data = json.loads(out.read_text())
    data["complete"] = True
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
