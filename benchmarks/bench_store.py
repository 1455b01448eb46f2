"""Which compressor for the store's one-slice chunks: write speed, random read speed, size.

    python benchmarks/bench_store.py            # 300 windowed 512x512 slices (~1.5 min; first run +30 s)
    python benchmarks/bench_store.py --quick    # 60 slices, ~30 s

The store (ctprep/store/) chunks every array one slice per chunk: the image
(z, 1, 512, 512) uint8, one window, and each label (z, 512, 512) uint8 0/1. This
script writes the same case's chunks with each candidate codec and measures

* zarr write MB/s: zarr-python writing the whole arrays (``arr[...] = data``);
* encode MB/s: the codec alone, one thread, in memory (no file system);
* compression ratio: uncompressed bytes / bytes of the chunk files;
* random single-slice reads/s (image + every label, hot page cache), two ways:
  zarr ``arr[z]``, and the store's own path (open the chunk file, decode into the
  output buffer; ctprep.store.chunks._ChunkFiles does this for zstd).

A codec is "clearly better" than zstd-1 if it is at least as good on size, direct
reads and encoding, and 10% better on one of them; the check passes when none is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

WINDOW = "liver"


def candidates() -> dict:
    """name -> (zarr v3 compressors, numcodecs codec of the chunk files, or None for raw bytes)."""
    from numcodecs import GZip, Blosc, Zstd
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    return {
        "zstd-1 (store)": ([ZstdCodec(level=1)], Zstd(level=1)),
        "zstd-3": ([ZstdCodec(level=3)], Zstd(level=3)),
        "blosc-lz4": ([BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")],
                      Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE)),
        "blosc-lz4 bitshuffle": ([BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")],
                                 Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE)),
        "gzip-1": ([GzipCodec(level=1)], GZip(level=1)),
        "none": ([], None),
    }


def load_case(source: Path) -> dict[str, np.ndarray]:
    """The arrays the store would hold for the test case: image (z, 1, y, x) and each label (z, y, x)."""
    from ctprep.sources import get_source
    from ctprep.windowing import apply_windows, parse_window

    lits = get_source("lits")
    volume = lits.load(lits.discover(source)[0])
    arrays = {"image": apply_windows(volume.hu, (parse_window(WINDOW),))}
    arrays.update({f"labels/{name}": np.ascontiguousarray(label) for name, label in volume.labels.items()})
    return arrays


def write_zarr(folder: Path, arrays: dict[str, np.ndarray], compressors) -> dict:
    import zarr
    from zarr.codecs import BytesCodec

    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    root = zarr.open_group(str(folder), mode="w")
    handles = {}
    for name, data in arrays.items():
        array = root.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(1, *data.shape[1:]),
                                  serializer=BytesCodec(), compressors=compressors, fill_value=0)
        array[...] = data
        handles[name] = array
    seconds = time.perf_counter() - started
    sizes = {name: common.folder_bytes(folder / name) for name in arrays}
    return {"seconds": seconds, "sizes": sizes, "arrays": handles}


def encode_seconds(arrays: dict[str, np.ndarray], codec) -> float:
    if codec is None:
        return 0.0
    started = time.perf_counter()
    for data in arrays.values():
        for z in range(data.shape[0]):
            if data[z].any():  # empty slices are never written
                codec.encode(data[z])
    return time.perf_counter() - started


class DirectReader:
    """The store's read path for one codec: open the chunk file, decode into the output buffer."""

    def __init__(self, folder: Path, arrays: dict[str, np.ndarray], codec):
        import zarr

        root = zarr.open_group(str(folder), mode="r")
        self.codec = codec
        self.targets = []
        for name, data in arrays.items():
            array = root[name]
            encoding = array.metadata.chunk_key_encoding
            zeros = (0,) * (data.ndim - 1)
            self.targets.append((os.path.join(folder, name), encoding, zeros,
                                 np.empty(data.shape[1:], dtype=data.dtype)))

    def read(self, z: int) -> list[np.ndarray]:
        for folder, encoding, zeros, out in self.targets:
            try:
                with open(os.path.join(folder, encoding.encode_chunk_key((z, *zeros))), "rb") as handle:
                    payload = handle.read()
            except FileNotFoundError:
                out[...] = 0
                continue
            flat = out.reshape(-1)
            if self.codec is None:
                flat[...] = np.frombuffer(payload, dtype=out.dtype)
            else:
                self.codec.decode(payload, out=flat)
        return [t[3] for t in self.targets]


def reads_per_second(read, nz: int, seconds: float, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    zs = rng.integers(0, nz, 100_000)
    read(int(zs[0]))
    done, started = 0, time.perf_counter()
    while True:
        read(int(zs[done % len(zs)]))
        done += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and done >= 20:
            return done / elapsed


def load_real_ct(folder: Path) -> dict[str, np.ndarray] | None:
    """A real chest CT (pyradiomics' lung1, 512x512x48, in ../shared/data on the project's machines)."""
    image_path, label_path = folder / "lung1_image.nrrd", folder / "lung1_label.nrrd"
    if not (image_path.is_file() and label_path.is_file()):
        return None
    import SimpleITK as sitk

    from ctprep.windowing import apply_windows, parse_window

    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path))).astype(np.int16)
    label = (sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))) > 0).astype(np.uint8)
    return {"image": apply_windows(hu, (parse_window(WINDOW),)), "labels/nodule": label}


def study(arrays: dict[str, np.ndarray], out: Path, seconds: float) -> dict[str, dict]:
    nz = arrays["image"].shape[0]
    raw = {name: data.nbytes for name, data in arrays.items()}
    results = {}
    for name, (compressors, codec) in candidates().items():
        folder = out / "store-study" / name.split()[0]
        written = min((write_zarr(folder, arrays, compressors) for _ in range(2)), key=lambda r: r["seconds"])
        encode = min(encode_seconds(arrays, codec) for _ in range(2))
        direct = DirectReader(folder, arrays, codec)
        for z in (0, nz // 2, nz - 1):  # the direct path must return exactly what was written
            for got, data in zip(direct.read(z), arrays.values()):
                if not np.array_equal(got, data[z]):
                    raise SystemExit(f"{name}: direct read of slice {z} differs")
        handles = list(written["arrays"].values())
        labels = [n for n in arrays if n != "image"]
        results[name] = {
            "write": sum(raw.values()) / 1e6 / written["seconds"],
            "encode": sum(raw.values()) / 1e6 / encode if encode else float("inf"),
            "ratio_image": raw["image"] / written["sizes"]["image"],
            "ratio_labels": sum(raw[n] for n in labels) / max(1, sum(written["sizes"][n] for n in labels)),
            "ratio": sum(raw.values()) / sum(written["sizes"].values()),
            "mb": sum(written["sizes"].values()) / 1e6,
            "zarr_reads": reads_per_second(lambda z: [a[z] for a in handles], nz, seconds),
            "direct_reads": reads_per_second(direct.read, nz, seconds),
        }
        shutil.rmtree(folder, ignore_errors=True)
    return results


def print_study(title: str, results: dict[str, dict]) -> None:
    rows = [[name, r["ratio_image"], r["ratio_labels"], r["mb"], r["write"], r["encode"], r["zarr_reads"],
             r["direct_reads"]] for name, r in results.items()]
    common.print_table(title, ["codec", "ratio image", "ratio labels", "store MB", "zarr write MB/s",
                               "encode MB/s 1 thread", "zarr arr[z] reads/s", "direct reads/s"], rows)


def describe(arrays: dict[str, np.ndarray]) -> str:
    nz = arrays["image"].shape[0]
    return ", ".join(f"{n} {a.nbytes / 1e6:.0f} MB ({int(np.count_nonzero(~a.reshape(nz, -1).any(axis=1)))} "
                     f"empty slices)" for n, a in arrays.items())


def clearly_better(results: dict[str, dict]) -> list[str]:
    ours = results["zstd-1 (store)"]
    better = []
    for name, r in results.items():
        if name == "zstd-1 (store)":
            continue
        pairs = [(r["ratio"], ours["ratio"]), (r["direct_reads"], ours["direct_reads"]), (r["encode"], ours["encode"])]
        if all(a >= b for a, b in pairs) and any(a >= 1.1 * b for a, b in pairs):
            better.append(name)
    return better


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="working folder (default: <tmp>/lesionkit-bench); test data is cached there")
    parser.add_argument("--slices", type=int, default=300, help="slices of the test volume (default 300)")
    parser.add_argument("--size", type=int, default=512, help="in-plane size (default 512)")
    parser.add_argument("--seconds", type=float, default=1.5, help="time each random-read test runs (default 1.5)")
    parser.add_argument("--real", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "pyradiomics_lung"),
                        help="folder with pyradiomics' lung1_image.nrrd + lung1_label.nrrd, a real CT also "
                             "studied when present (default: ../shared/data/pyradiomics_lung)")
    parser.add_argument("--quick", action="store_true", help="small run: 60 slices, 0.75 s per read test")
    args = parser.parse_args()
    if args.quick:
        args.slices, args.seconds = 60, 0.75

    out = common.out_dir(args.out, "bench")
    print(common.machine_line())
    print(common.library_line())
    source = common.lits_volume(out, args.slices, args.size)
    studies = {}
    arrays = load_case(source)
    nz = arrays["image"].shape[0]
    print(f"phantom case: {nz} slices {args.size}x{args.size}, window {WINDOW}; {describe(arrays)}")
    studies["phantom"] = (f"Phantom LiTS case, {nz} slices: image + {len(arrays) - 1} labels, "
                          f"{sum(a.nbytes for a in arrays.values()) / 1e6:.0f} MB uncompressed; "
                          f"reads are slices/s of image + all labels", study(arrays, out, args.seconds))
    real = load_real_ct(Path(args.real))
    if real is None:
        print(f"real CT: {args.real} not found, skipped")
    else:
        nz = real["image"].shape[0]
        print(f"real CT (pyradiomics lung1): {nz} slices 512x512, window {WINDOW}; {describe(real)}")
        studies["real CT"] = (f"Real chest CT (pyradiomics lung1), {nz} slices: image + nodule label, "
                              f"{sum(a.nbytes for a in real.values()) / 1e6:.0f} MB uncompressed",
                              study(real, out, args.seconds))
    for title, results in studies.values():
        print_study(title, results)

    verdicts = common.Verdicts()
    for key, (_, results) in studies.items():
        better = clearly_better(results)
        verdicts.check(f"4  {key}: codecs clearly better than zstd-1 (0 wanted)", len(better), 1, "", higher=False)
        if better:
            verdicts.note(f"clearly better: {', '.join(better)}")
        ours = results["zstd-1 (store)"]
        compressed = {n: r for n, r in results.items() if n != "none"}
        fastest = max(compressed, key=lambda n: compressed[n]["direct_reads"])
        smallest = max(compressed, key=lambda n: compressed[n]["ratio"])
        verdicts.note(f"fastest direct reads: {fastest} ({compressed[fastest]['direct_reads']:,.0f}/s, zstd-1 "
                      f"{ours['direct_reads']:,.0f}/s); smallest: {smallest} (ratio "
                      f"{compressed[smallest]['ratio']:.2f}, zstd-1 {ours['ratio']:.2f})")
    print(common.machine_line())
    return verdicts.print()


if __name__ == "__main__":
    sys.exit(main())
