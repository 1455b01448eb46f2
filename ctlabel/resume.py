"""Which cases a labelling run does: those asked for, less those done; and conflicts with made labels.

Convention: a case is done when each output label exists, its checksums are recorded in
the case (its write completed), and its attribute ``ctlabel.parameters`` equals the
run's (:meth:`ctlabel.config.LabelConfig.trimap_parameters`, ``soft_parameters``). Other
parameters are a conflict unless ``overwrite``; an absent or unrecorded label is written (again).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from ctlabel.config import ATTRIBUTE_KEY, LabelConfig, as_stored
from ctlabel.errors import LabelInputError
from ctprep.errors import CaseNotFoundError
from ctprep.store import SliceStore
from lkbase.choices import unknown
from lkbase.plain import differences


def case_state(store: SliceStore, case_id: str, config: LabelConfig) -> tuple[str, str]:
    """("done" | "todo" | "conflict", detail): whether the case's outputs exist with these parameters."""
    wanted = [(config.trimap_label, config.trimap_parameters())]
    if config.matting:
        wanted.append((config.soft_label, config.soft_parameters()))
    present = set(store.label_names(case_id))
    recorded = store.recorded_checksums(case_id)
    state = "done"
    for label, parameters in wanted:
        if label not in present or (recorded and f"labels/{label}" not in recorded):
            # Absent, or renamed into place by a run killed before it recorded the label's
            # checksums in the case (so `ctprep verify` would not vouch for it): write it (again).
            state = "todo"
            continue
        made = store.label_attributes(case_id, label).get(ATTRIBUTE_KEY, {}).get("parameters")
        if made != as_stored(parameters):
            if not config.overwrite:
                return "conflict", f"case {case_id}: label {label} exists, made with other parameters " \
                                   f"({_difference(made, as_stored(parameters))})"
            state = "todo"
    return state, ""


def _difference(made, wanted) -> str:
    if not isinstance(made, dict):
        return "not made by ctlabel"
    return differences(_flatten(made), _flatten(wanted))


def _flatten(value: dict, prefix: str = "") -> dict:
    flat = {}
    for key, item in value.items():
        if isinstance(item, dict):
            flat.update(_flatten(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item
    return flat


def resolve_label(store: SliceStore, config: LabelConfig, case_ids: Sequence[str]) -> LabelConfig:
    """--from mask without --label: the lesion label the store's cases name (all the same), else an error."""
    if config.source != "mask" or config.label:
        return config
    names = {store.record(c).lesion_label for c in case_ids}
    names.discard(None)
    if len(names) != 1:
        raise LabelInputError(f"{store.path}: --from mask needs --label NAME "
                              f"(the cases' lesion labels: {sorted(names) or 'none'})")
    return dataclasses.replace(config, label=names.pop())


def require_evidence(store: SliceStore, config: LabelConfig, case_ids: Sequence[str]) -> None:
    """Refuse, once and before any case, evidence labels that no selected case has (a typo in --label)."""
    stored = sorted({name for c in case_ids for name in store.label_names(c)})
    for name in config.evidence_labels:
        if case_ids and name not in stored:
            raise LabelInputError(f"{store.path}: {unknown('label', name, stored)}")


def selected_cases(store: SliceStore, cases: Sequence[str] | None) -> list[str]:
    """The store's cases, or those of ``cases`` (all must exist)."""
    case_ids = store.case_ids()
    if cases:
        unknown = sorted(set(cases) - set(case_ids))
        if unknown:
            raise CaseNotFoundError(f"{store.path}: no case {', '.join(map(repr, unknown))}")
        case_ids = [c for c in case_ids if c in set(cases)]
    return case_ids
