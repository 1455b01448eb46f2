"""The CT slice store: the one package that knows the on-disk format (docs/store-format.md).

A store is a Zarr v3 hierarchy, in a local folder or at an fsspec URL (s3://, gs://,
memory:// ...; local folders and file:// keep the fast paths, see files.py)::

    STORE.zarr/
      zarr.json                   format, version, parameters, manifest (attributes)
      cases/<case_id>/            one group per case; attributes hold its CaseRecord
        image                     uint8 (z, channel, y, x), one channel per window
        hu                        int16 (z, y, x), only with --keep-hu
        labels/<name>             uint8 (z, y, x), 0/1 (later: trimaps, soft masks ...)
      index/                      the slice index: case, z, z_mm, lesion_pixels, split

A predictions store (``predictions``) has the same layout without images: only
``cases/<case_id>/labels/pred_*``, and its root names the dataset store it was predicted from.

Every array is chunked one slice per chunk and compressed with zstd level 1
(benchmarks/bench_store.py chose it). A case becomes visible only when its
attributes say ``complete``; that write comes last, so an interrupted
conversion leaves an incomplete case that readers ignore and the next run redoes.

Modules, by concern: ``layout`` (format name and version, paths, every naming rule of
cases and labels), ``index`` (the slice index), ``chunks`` (the chunk-file fast path and
checksums), ``files`` (local or fsspec file layer, writer lock, atomic small files),
``arrays`` (what a case holds, slabs, checks on arrays to write), ``writing`` (a case's arrays
written slab by slab, then its marker), ``slicestore`` (SliceStore), ``predictions``
(PredictionStore, and WithPredictions: a dataset store read with one).
Import the public names from here.

No module outside ctprep/store/ imports zarr.
"""

from ctprep.store.arrays import CaseData, Slab, SliceBatch
from ctprep.store.chunks import array_checksums, checksums_digest, chunk_checksum
from ctprep.store.files import check_shared, is_url, store_lock, write_file_atomic
from ctprep.store.index import INDEX_DTYPE, SliceIndex
from ctprep.store.layout import (FORMAT_NAME, FORMAT_VERSION, LABEL_DTYPES, PREDICTION_PREFIX, ZSTD_LEVEL,
                                 binary_label, prediction_labels, run_label_stem, soft_base, soft_label,
                                 softened_label, trimap_label)
from ctprep.store.slicestore import SliceStore
from ctprep.store.predictions import (PredictionStore, WithPredictions, is_predictions_store, open_for_reading,
                                      open_predictions)

__all__ = ["CaseData", "Slab", "SliceBatch", "array_checksums", "checksums_digest", "chunk_checksum", "check_shared",
           "is_url", "store_lock", "write_file_atomic", "INDEX_DTYPE", "SliceIndex", "FORMAT_NAME",
           "FORMAT_VERSION", "LABEL_DTYPES", "PREDICTION_PREFIX", "ZSTD_LEVEL", "binary_label",
           "prediction_labels", "run_label_stem", "soft_base", "soft_label", "softened_label", "trimap_label",
           "SliceStore", "PredictionStore", "WithPredictions", "is_predictions_store", "open_for_reading",
           "open_predictions"]
