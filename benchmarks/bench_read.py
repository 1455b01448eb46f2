"""Reading random training batches from a slice store, against re-reading the .nii.gz files.

    python benchmarks/bench_read.py             # 512x512x300 case (~1.5 min; first run +30 s)
    python benchmarks/bench_read.py --quick     # 512x512x60, ~30 s
    python benchmarks/bench_read.py --quick --s3  # + the same store in a bucket of a local S3 server (moto)

Target (issue 20, --s3): read_slices from a bucket (moto on 127.0.0.1, a batch's chunks
requested at once) >= 0.3x of the same store on local disk. The run also prints what bounds
it (benchmarks/_s3_bench.py): requests per batch, moto's requests/s against a plain GET loop,
moto's CPU per GetObject with and without its HTTP server, and the best ratio these allow.

Target 3 (benchmarks/README.md), ratios measured in this run:

* random batches of 16 slices with their labels from ``SliceStore.read_slices`` are
  >= 100x faster than extracting the same slices by loading the .nii.gz each time;
* >= 1,500 slices/s (512x512, image + all labels) from 2 reader processes, each with
  its own SliceStore.

Plain zarr reads (``arr[z]`` per slice, ``arr.oindex[zs]`` per batch) are shown for
comparison. The store is read hot (in the page cache), as a training loop sees it
after the first epoch on a machine with enough memory.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from _s3_bench import s3_rates  # noqa: E402

WINDOW = "liver"
BATCH = 16


def random_batches(keys: list[tuple[str, int]], count: int, seed: int) -> list[list[tuple[str, int]]]:
    rng = np.random.default_rng(seed)
    return [[keys[i] for i in rng.integers(0, len(keys), BATCH)] for _ in range(count)]


def timed(fn, batches, seconds: float) -> tuple[float, int]:
    """Run ``fn`` over the batches (cycling) for about ``seconds``; returns (slices/s, slices read)."""
    fn(batches[0])  # warm: opens files, fills caches
    done, started = 0, time.perf_counter()
    while True:
        fn(batches[done % len(batches)])
        done += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and done >= 3:
            return done * BATCH / elapsed, done * BATCH


# ---- the ways of reading a batch -------------------------------------------------------------

class StoreReader:
    def __init__(self, path: Path):
        from ctprep.store import SliceStore

        self.store = SliceStore.open(path)
        self.labels = self.store.label_names(self.store.case_ids()[0])

    def __call__(self, keys):
        batch = self.store.read_slices(keys, labels=self.labels)
        return batch.image, batch.labels


class ZarrPerSlice:
    """Plain zarr-python: one ``arr[z]`` per slice and array."""

    def __init__(self, path: Path, labels: list[str]):
        import zarr

        self.root = zarr.open_group(str(path), mode="r")
        self.labels = labels
        self.arrays = {}

    def _arrays(self, case_id):
        if case_id not in self.arrays:
            case = self.root[f"cases/{case_id}"]
            self.arrays[case_id] = (case["image"], [case[f"labels/{n}"] for n in self.labels])
        return self.arrays[case_id]

    def __call__(self, keys):
        images, labels = [], {n: [] for n in self.labels}
        for case_id, z in keys:
            image, label_arrays = self._arrays(case_id)
            images.append(image[z])
            for name, array in zip(self.labels, label_arrays):
                labels[name].append(array[z])
        return np.stack(images), {n: np.stack(v) for n, v in labels.items()}


class ZarrOindex(ZarrPerSlice):
    """Plain zarr-python: one ``arr.oindex[zs]`` per case and array of the batch."""

    def __call__(self, keys):
        first_image, _ = self._arrays(keys[0][0])
        image = np.empty((len(keys), *first_image.shape[1:]), dtype=np.uint8)
        labels = {n: np.empty((len(keys), *first_image.shape[2:]), dtype=np.uint8) for n in self.labels}
        by_case: dict[str, list[int]] = {}
        for i, (case_id, _) in enumerate(keys):
            by_case.setdefault(case_id, []).append(i)
        for case_id, rows in by_case.items():
            zs = np.array([keys[i][1] for i in rows])
            order = np.argsort(zs, kind="stable")  # zarr wants increasing indices
            image_array, label_arrays = self._arrays(case_id)
            where = np.asarray(rows)[order]
            image[where] = image_array.oindex[zs[order]]
            for name, array in zip(self.labels, label_arrays):
                labels[name][where] = array.oindex[zs[order]]
        return image, labels


class NiftiPerSlice:
    """Each slice from its .nii.gz with nibabel's lazy proxy (it decodes up to that slice)."""

    def __init__(self, store_reader: StoreReader, input_dir: Path):
        import nibabel as nib

        from ctprep.sources import get_source
        from ctprep.windowing import window_lookup_table

        self.nib = nib
        self.input_dir = input_dir
        self.store = store_reader.store
        self.labels = store_reader.labels
        self.label_values = {spec.name: spec.values for spec in get_source("lits").manifest.labels}
        # The store keeps no input paths (issue 17): the source finds the case's files again.
        self.refs = {ref.case_id: ref for ref in get_source("lits").discover(input_dir)}
        self.tables = [window_lookup_table(w) for w in self.store.record(self.store.case_ids()[0]).windows]

    def _slice(self, case_id, z, role):
        record = self.store.record(case_id)
        inputs = dict(self.refs[case_id].files)
        proxy = self.nib.load(self.input_dir / inputs[role]).dataobj
        # The test case is stored RAS (checked below): array (x, y, z), canonical (z, y, x) flips x and y.
        return np.asarray(proxy[:, :, record.slice_indices[z]]).T[::-1, ::-1]

    def __call__(self, keys):
        images, labels = [], {n: [] for n in self.labels}
        for case_id, z in keys:
            hu = self._slice(case_id, z, "image")
            images.append(np.stack([table[hu.view(np.uint16)] for table in self.tables]))
            seg = self._slice(case_id, z, "label")
            for name in self.labels:
                labels[name].append(np.isin(seg, self.label_values[name]).astype(np.uint8))
        return np.stack(images), {n: np.stack(v) for n, v in labels.items()}


class NiftiPerBatch(NiftiPerSlice):
    """Each batch loads its cases once with ctprep's own reader (source.load: ISA-L, label checks)."""

    def __call__(self, keys):
        from ctprep.sources import get_source
        from ctprep.windowing import apply_windows

        source = get_source("lits")
        image = np.empty((len(keys), len(self.tables), *self.store.record(keys[0][0]).geometry.shape[1:]), np.uint8)
        labels = {n: np.empty((len(keys), *image.shape[2:]), np.uint8) for n in self.labels}
        by_case: dict[str, list[int]] = {}
        for i, (case_id, _) in enumerate(keys):
            by_case.setdefault(case_id, []).append(i)
        for case_id, rows in by_case.items():
            record = self.store.record(case_id)
            volume = source.load(self.refs[case_id])
            zs = [record.slice_indices[keys[i][1]] for i in rows]
            image[rows] = apply_windows(volume.hu[zs], record.windows)
            for name in self.labels:
                labels[name][rows] = volume.labels[name][zs]
        return image, labels


# ---- reader processes ---------------------------------------------------------------------------

def reader_process(path: str, seconds: float, seed: int, barrier, results) -> None:
    from ctprep.store import SliceStore

    store = SliceStore.open(path)  # each process its own store, as DataLoader workers do
    keys = store.index().keys()
    labels = store.label_names(store.case_ids()[0])
    batches = random_batches(keys, 200, seed)
    store.read_slices(batches[0], labels=labels)
    barrier.wait()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        store.read_slices(batches[done % len(batches)], labels=labels)
        done += 1
    results.put((done * BATCH, time.perf_counter() - started))


def parallel_rate(path: Path, processes: int, seconds: float) -> float:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=reader_process, args=(str(path), seconds, seed, barrier, results))
               for seed in range(processes)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join()
    return sum(n for n, _ in outcomes) / max(t for _, t in outcomes)


# ---- --s3: the bucket against local disk, and moto's ceiling (_s3_bench.py) ----------------------

def s3_verdicts(verdicts: "common.Verdicts", s3: dict) -> None:
    ratios = [r / l for l, r in zip(s3["local"], s3["remote"])]
    local = statistics.median(s3["local"])
    verdicts.check("s3 read_slices (moto on 127.0.0.1) / local disk, median of 3 rounds",
                   statistics.median(ratios), 0.3)
    verdicts.note("(rounds: " + ", ".join(f"local {l:,.0f} / bucket {r:,.0f} slices/s = {r / l:.3f}x at load "
                                         f"{a:.1f}" for l, r, a in zip(s3["local"], s3["remote"], s3["loads"])) + ")")
    per_slice = s3["chunks_per_batch"] / BATCH
    calls = ", ".join(f"{n:.1f} {op}" for op, n in sorted(s3["calls"].items()))
    verdicts.note(f"(requests per batch of {BATCH}: {calls}; the batch's distinct recorded chunks: "
                  f"{s3['chunks_per_batch']:.1f}, i.e. {per_slice:.2f} a slice)")
    verdicts.note(f"(read_slices: {s3['requests_per_s']:.0f} requests/s, {s3['wall_ms']:.1f} ms wall a request; "
                  f"CPU a request: moto's server {s3['server_ms']:.1f} ms, this reader (s3fs/botocore + "
                  f"decoding) {s3['client_ms']:.1f} ms)")
    (rate1, cpu1), (rate2, cpu2) = s3["trivial"][1], s3["trivial"][2]
    best = max(rate1, rate2)
    verdicts.note(f"(moto's ceiling: a plain http.client GET loop gets {rate1:.0f} requests/s (1 thread; "
                  f"server {cpu1:.1f} ms CPU a request), {rate2:.0f} (2 threads; {cpu2:.1f} ms): read_slices "
                  f"reaches {s3['requests_per_s'] / best:.0%} of it; best ratio against moto "
                  f"~{best / per_slice / local:.3f}x)")
    floor = s3["app_ms"]
    verdicts.note(f"(moto's S3 code alone, called in-process without HTTP: {floor:.2f} ms CPU per GetObject of "
                  f"{s3['chunk_bytes']:,} bytes = at most {1000 / floor:.0f} requests/s on a core, "
                  f"~{1000 / floor / per_slice / local:.3f}x of local at best; 0.3x needs "
                  f"{0.3 * local * per_slice:,.0f} requests/s, {1000 / (0.3 * local * per_slice):.2f} ms a request)")


# ---- main ---------------------------------------------------------------------------------------

def build_store(out: Path, source: Path) -> Path:
    path = out / "read.zarr"
    shutil.rmtree(path, ignore_errors=True)
    common._python(f"""
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.windowing import parse_window
convert_dataset(ConvertConfig(source="lits", input_dir={str(source)!r}, output={str(path)!r},
                              windows=(parse_window({WINDOW!r}),), overwrite=True), progress=False)
""")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="working folder (default: <tmp>/lesionkit-bench); test data is cached there")
    parser.add_argument("--slices", type=int, default=300, help="slices of the test volume (default 300)")
    parser.add_argument("--size", type=int, default=512, help="in-plane size (default 512)")
    parser.add_argument("--seconds", type=float, default=4.0, help="time each store reader runs (default 4)")
    parser.add_argument("--processes", type=int, default=2, help="reader processes of the parallel test (default 2)")
    parser.add_argument("--baseline-batches", type=int, default=1,
                        help="batches read through nibabel per slice (slow: ~10 s a batch at 300 slices)")
    parser.add_argument("--quick", action="store_true", help="small run: 60 slices, 2 s per reader")
    parser.add_argument("--s3", action="store_true", help="also read the store from a local S3 server (moto, s3fs)")
    args = parser.parse_args()
    if args.quick:
        args.slices, args.seconds = 60, 2.0

    out = common.out_dir(args.out, "bench")
    print(common.machine_line())
    print(common.library_line())
    source = common.lits_volume(out, args.slices, args.size)
    path = build_store(out, source)
    store_reader = StoreReader(path)
    keys = store_reader.store.index().keys()
    record = store_reader.store.record(keys[0][0])
    if record.source_grid.axcodes != "RAS":
        raise SystemExit(f"expected the RAS test volume, found {record.source_grid.axcodes}")
    print(f"store: {path}  {len(keys)} slices of {args.size}x{args.size}, {len(record.windows)} window(s), "
          f"labels {store_reader.labels}; random batches of {BATCH}")

    batches = random_batches(keys, 500, seed=1)
    readers = {
        "SliceStore.read_slices": store_reader,
        "zarr arr[z] per slice": ZarrPerSlice(path, store_reader.labels),
        "zarr arr.oindex[zs] per batch": ZarrOindex(path, store_reader.labels),
    }
    baselines = {
        ".nii.gz per slice (nibabel proxy)": NiftiPerSlice(store_reader, source),
        ".nii.gz per batch (ctprep source.load)": NiftiPerBatch(store_reader, source),
    }
    # Every reader must return what the store holds.
    want_image, want_labels = store_reader(batches[0])
    for name, reader in {**readers, **baselines}.items():
        image, labels = reader(batches[0])
        if not (np.array_equal(image, want_image)
                and all(np.array_equal(labels[n], want_labels[n]) for n in want_labels)):
            raise SystemExit(f"{name}: returned different slices from the store's")

    rates = {name: 0.0 for name in readers}
    for _ in range(2):  # two rounds, best of each: a burst of load elsewhere only lowers a rate
        for name, reader in readers.items():
            rates[name] = max(rates[name], timed(reader, batches, args.seconds / 2)[0])
    rates[".nii.gz per slice (nibabel proxy)"] = timed(baselines[".nii.gz per slice (nibabel proxy)"],
                                                       batches[1:1 + args.baseline_batches], 0)[0]
    rates[".nii.gz per batch (ctprep source.load)"] = timed(baselines[".nii.gz per batch (ctprep source.load)"],
                                                             batches[1:4], 0)[0]
    single = parallel_rate(path, 1, args.seconds)
    parallel = parallel_rate(path, args.processes, args.seconds)

    store_rate = rates["SliceStore.read_slices"]
    rows = [[name, rate, 1000 * BATCH / rate, store_rate / rate] for name, rate in rates.items()]
    rows += [["SliceStore, 1 reader process", single, 1000 * BATCH / single, store_rate / single],
             [f"SliceStore, {args.processes} reader processes (total)", parallel,
              1000 * BATCH / parallel, store_rate / parallel]]
    common.print_table(f"Random batches of {BATCH} slices ({args.size}x{args.size}) with labels {store_reader.labels}",
                       ["reader", "slices/s", "ms/batch", "read_slices is x faster"], rows)

    verdicts = common.Verdicts()
    verdicts.check("3a read_slices / .nii.gz per slice (nibabel)",
                   store_rate / rates[".nii.gz per slice (nibabel proxy)"], 100)
    verdicts.note(f"(against loading each batch's cases once with ctprep's source.load: "
                  f"{store_rate / rates['.nii.gz per batch (ctprep source.load)']:.0f}x)")
    verdicts.check(f"3b slices/s from {args.processes} reader processes", parallel, 1500, " slices/s")
    verdicts.note(f"(one process: {single:,.0f} slices/s; plain zarr arr[z] in one process: "
                  f"{rates['zarr arr[z] per slice']:,.0f} slices/s)")
    if args.s3:
        s3_verdicts(verdicts, s3_rates(StoreReader, path, batches, timed, args.seconds))
    print(common.machine_line())
    return verdicts.print()


if __name__ == "__main__":
    sys.exit(main())
