"""ctlabel: trimaps and soft masks for the lesions of a ctprep slice store.

* :mod:`ctlabel.trimap`: trimaps from a mask, from readers' masks, from RECIST axes (GrabCut);
* :mod:`ctlabel.matting`: closed-form matting (pymatting) on a crop around each lesion;
* :mod:`ctlabel.soften`: softened labels max(soft, binary) and binarised soft masks;
* :mod:`ctlabel.lesions`: which lesions a case has; :mod:`ctlabel.label`: the runner over a store;
* :mod:`ctlabel.preview`: PNG grids of lesions. Values and defaults: docs/labels.md.

Importing ctlabel imports neither pymatting nor numba (they load when a solve needs them).
"""
