"""ctlabel: trimaps and soft masks for the lesions of a ctprep slice store.

* :mod:`ctlabel.trimap`: trimaps from a mask, from readers' masks, from RECIST axes (GrabCut);
* :mod:`ctlabel.matting`: closed-form matting (pymatting, via :mod:`ctlabel._pymatting` and
  :mod:`ctlabel.numba_cache`) on a crop around each lesion;
* :mod:`ctlabel.soften`: softened labels max(soft, binary) and binarised soft masks;
* :mod:`ctlabel.lesions`: which lesions a case has;
* the run over a store: :mod:`ctlabel.label` (``label_store``) over :mod:`ctlabel.config`
  (what to do), :mod:`ctlabel.resume` (which cases), :mod:`ctlabel.cases` (one case),
  :mod:`ctlabel.jobs` (one lesion), :mod:`ctlabel.per_lesion` (``--dask``),
  :mod:`ctlabel.report` (outcomes and summary);
* :mod:`ctlabel.preview`: PNG grids of lesions. Values and defaults: docs/labels.md.

Importing ctlabel imports neither pymatting nor numba (they load when a solve needs them).
Imports point one way: lkbase <- ctprep <- ctlabel (docs/architecture.md).
"""
