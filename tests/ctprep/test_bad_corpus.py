"""The bad-input corpus (bad_corpus.py) through every command (issue 7).

For each source one folder in the real layout with two good cases and many broken ones goes
through ``ctprep check``, ``ctprep convert`` into a fresh store and into a store that already
holds the good cases, then ``info``, ``verify``, ``audit``, ``preview`` and ``export`` on the
results and ``ctlabel trimap`` (``softmask`` on DeepLesion). Each conversion runs once per
source (module fixtures); each broken case is then its own test:

* no command ends in a traceback: click returns normally or exits with the documented code,
  and an error is one line;
* a broken case is skipped once, by its id, with a one-line reason naming its file and matching
  what is wrong (or converted where ctprep legitimately repairs it, saying so in its record);
* nothing of a broken case is in the store, the good cases hold their exact values, cases
  already in a store are byte for byte untouched, and ``ctprep verify`` is clean afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

import bad_corpus as bc
from ctprep.cli import main as ctprep
from ctprep.conversion_manifest import manifest_path
from ctprep.store import SliceStore

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))  # as tests/ctlabel/conftest.py

BROKEN = [pytest.param(d, id=d.test_id) for d in bc.ALL_DEFECTS]
SOURCES = list(bc.SOURCES)
TRIMAP_FROM = {"lits": ("--from", "mask", "--label", "tumour"), "kits19": ("--from", "mask", "--label", "tumour"),
               "nsclc": ("--from", "mask", "--label", "tumour"), "lidc": ("--from", "readers"),
               "deeplesion": ("--from", "recist")}


# ---- running the commands ------------------------------------------------------------------------


def invoke(main, *args, codes=(0,)) -> Result:
    """Run a click command in-process; fail on a traceback, an unexpected exit code or a multi-line error."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        pytest.fail("".join(traceback.format_exception(*result.exc_info)))
    assert "Traceback" not in result.output
    assert result.exit_code in codes, f"exit {result.exit_code}\n{result.output}"
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) <= 1 and (not errors or result.stderr.strip() == errors[0]), result.stderr
    return result


def convert(source: str, root: Path, output: Path, *more, codes=(0,)) -> Result:
    return invoke(ctprep, "convert", "--quiet", "--keep-hu", "--source", source, "--input", root,
                  "--output", output, *more, codes=codes)


@dataclass(frozen=True)
class Runs:
    """What the commands made of one source's corpus."""

    corpus: bc.SourceCorpus
    check: Result
    fresh: Result  # convert into a new store
    fresh_store: Path
    existing: Result  # convert into a store holding the good cases already
    existing_store: Path
    before: dict  # case id -> the good case's store files before that second conversion

    def manifest(self, store: Path) -> dict:
        return json.loads(Path(manifest_path(store)).read_text())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> bc.Corpus:
    return bc.build_corpus(tmp_path_factory.mktemp("bad_corpus"))


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory, ct):
    done: dict[str, Runs] = {}

    def get(source: str) -> Runs:
        if source not in done:
            sc = corpus.sources[source]
            out = tmp_path_factory.mktemp(f"stores_{source}")
            check = invoke(ctprep, "check", "--source", source, "--input", sc.root, codes=(1,))
            fresh = convert(source, sc.root, out / "fresh.zarr")
            existing_store = out / "existing.zarr"
            convert(source, sc.root, existing_store, "--cases", ",".join(sc.good_ids))
            before = {c: ct.store_file_bytes(existing_store / "cases" / c) for c in sc.good_ids}
            existing = convert(source, sc.root, existing_store)
            done[source] = Runs(corpus=sc, check=check, fresh=fresh, fresh_store=out / "fresh.zarr",
                                existing=existing, existing_store=existing_store, before=before)
        return done[source]

    return get


def written(corpus: bc.Corpus, defect: bc.Defect) -> bc.BadCase:
    (case,) = [c for c in corpus.sources[defect.source].bad if c.defect is defect]
    return case


# ---- the corpus itself ---------------------------------------------------------------------------


def test_corpus_covers_every_defect_kind_for_every_source():
    assert len(bc.ALL_DEFECTS) == 105  # quoted in docs/bad-input.md
    for source, defects in bc.DEFECTS.items():
        assert {d.kind for d in defects} == set(bc.DEFECT_KINDS), source
        assert len({d.what for d in defects}) == len({d.number for d in defects}) == len(defects), source


def test_corpus_is_small(corpus):
    files = [p for p in corpus.root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5_000_000


# ---- every broken case -----------------------------------------------------------------------------


def _names_file(reason: str, root: Path, file: str) -> bool:
    """The reason gives the file's full path, or its folder's full path and its name."""
    full = root / file
    return str(full) in reason or (Path(file).name in reason and str(full.parent) in reason)


@pytest.mark.parametrize("defect", BROKEN)
def test_broken_case_is_skipped_once_with_its_reason_or_repaired(defect, corpus, runs):
    run = runs(defect.source)
    case = written(corpus, defect)
    root = run.corpus.root
    for result, store in ((run.fresh, run.fresh_store), (run.existing, run.existing_store)):
        entry = run.manifest(store)["cases"][case.case_id]
        stored = SliceStore.open(store)
        skipped_lines = [line for line in result.stdout.splitlines() if line.startswith(f"  skipped {case.case_id}:")]
        if defect.outcome == "skipped":
            assert entry["status"] == "skipped" and len(skipped_lines) == 1  # reported once, by its id
            reason = skipped_lines[0].removeprefix(f"  skipped {case.case_id}: ")
            # the manifest's copy names the file under INPUT/, its non-public names hashed (ctprep/public_paths.py)
            assert str(root) not in entry["reason"] and entry["reason"].startswith("INPUT")
            assert "\n" not in reason and re.search(defect.reason, reason), reason
            assert _names_file(reason, root, case.file), (case.file, reason)
            assert "unexpected" not in reason  # convert's catch-all for bugs never fires on the corpus
            assert case.case_id not in stored.case_ids() and case.case_id not in stored.incomplete_case_ids()
            assert not (store / "cases" / case.case_id).exists()
            assert case.case_id not in {c for c, _ in stored.index().keys()}
        else:
            assert entry["status"] == "converted" and not skipped_lines
            annotations = json.dumps(stored.record(case.case_id).annotations)
            assert defect.note is None or re.search(defect.note, annotations), annotations


@pytest.mark.parametrize("defect", BROKEN)
def test_check_reports_what_headers_show(defect, corpus, runs):
    run = runs(defect.source)
    case = written(corpus, defect)
    lines = [line for line in run.check.stdout.splitlines() if line.startswith(f"  unreadable  {case.case_id}: ")]
    pattern = case.check_pattern
    if pattern is None:  # needs the voxels, or is repaired: check has nothing to say
        assert lines == []
    else:
        assert len(lines) == 1, run.check.stdout
        assert re.search(pattern, lines[0]) and str(run.corpus.root) in lines[0], lines[0]


# ---- per source ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
def test_summary_and_manifest_account_for_every_case(source, runs):
    run = runs(source)
    sc = run.corpus
    skipped = sorted(c.case_id for c in sc.bad if c.outcome == "skipped")
    converted = len(sc.bad) - len(skipped) + sum(g.case_id not in {c.case_id for c in sc.bad} for g in sc.good)
    first = run.fresh.stdout.splitlines()[0]
    assert f": {converted} converted, 0 already complete, {len(skipped)} skipped;" in first, first
    resumed = run.existing.stdout.splitlines()[0]
    newly = converted - len(sc.good_ids)
    assert f": {newly} converted, {len(sc.good_ids)} already complete, {len(skipped)} skipped;" in resumed
    for store in (run.fresh_store, run.existing_store):
        manifest = run.manifest(store)
        assert manifest["summary"] == {"converted": converted, "skipped": skipped}
        assert sorted(SliceStore.open(store).case_ids()) == sorted(
            set(sc.good_ids) | {c.case_id for c in sc.bad if c.outcome == "converted"})


@pytest.mark.parametrize("source", SOURCES)
def test_good_cases_hold_their_values(source, runs):
    run = runs(source)
    store = SliceStore.open(run.fresh_store)
    for good in run.corpus.good:
        data = store.read_case(good.case_id, hu=True)
        np.testing.assert_array_equal(data.hu, good.hu, err_msg=good.case_id)
        for name, expected in good.labels.items():
            got = data.labels[name].astype(bool)
            if good.min_dice >= 1.0:
                np.testing.assert_array_equal(got, expected.astype(bool), err_msg=f"{good.case_id} {name}")
            else:
                dice = 2 * np.count_nonzero(got & expected.astype(bool)) / (got.sum() + expected.astype(bool).sum())
                assert dice >= good.min_dice, (good.case_id, name, dice)


@pytest.mark.parametrize("source", SOURCES)
def test_cases_already_in_the_store_are_untouched(source, runs, ct):
    run = runs(source)
    for case_id, files in run.before.items():
        assert ct.store_file_bytes(run.existing_store / "cases" / case_id) == files, case_id


@pytest.mark.parametrize("source", SOURCES)
def test_store_commands_on_the_result(source, runs, tmp_path):
    run = runs(source)
    store = run.fresh_store
    info = invoke(ctprep, "info", store)
    assert str(len(SliceStore.open(store).case_ids())) in info.stdout
    invoke(ctprep, "info", store, "--json")
    verify = invoke(ctprep, "verify", "--quiet", store)
    assert verify.stdout.strip().splitlines()[-1].endswith(": OK"), verify.stdout
    audit = invoke(ctprep, "audit", store)
    assert "Traceback" not in audit.output
    for case_id in run.corpus.good_ids:
        out = tmp_path / f"{case_id}.png"
        invoke(ctprep, "preview", store, "--case", case_id, "--out", out)
        assert out.stat().st_size > 0
    good = run.corpus.good_ids[0]
    label = SliceStore.open(store).record(good).lesion_label
    exported = tmp_path / "label.nii.gz"
    invoke(ctprep, "export", store, "--case", good, "--label", label, "--out", exported)
    assert exported.stat().st_size > 0
    # a broken case is nowhere: the commands that take a case say so in one line
    broken = next(c.case_id for c in run.corpus.bad if c.outcome == "skipped")
    for args in (("preview", store, "--case", broken, "--out", tmp_path / "x.png"),
                 ("export", store, "--case", broken, "--label", label, "--out", tmp_path / "x.nii.gz")):
        result = invoke(ctprep, *args, codes=(1,))
        assert broken in result.stderr and result.stderr.startswith("ctprep: error: "), result.stderr
        assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.nii.gz").exists()


@pytest.mark.parametrize("source", SOURCES)
def test_ctlabel_on_the_result_then_verify_is_clean(source, runs):
    from ctlabel.cli import main as ctlabel

    run = runs(source)
    store = run.existing_store
    trimap = invoke(ctlabel, "trimap", store, *TRIMAP_FROM[source], "--quiet")
    assert "Traceback" not in trimap.output
    if source == "deeplesion":  # closed-form matting once (its kernels are compiled once per checkout)
        invoke(ctlabel, "softmask", store, "--recist", "--quiet", "--max-unknown", "200")
    verify = invoke(ctprep, "verify", "--quiet", store)
    assert verify.stdout.strip().splitlines()[-1].endswith(": OK"), verify.stdout
    # and the cases converted before the corpus was added still read as they were written
    stored = SliceStore.open(store)
    for good in run.corpus.good:
        np.testing.assert_array_equal(stored.read_case(good.case_id, hu=True).hu, good.hu)


# ---- whole downloads that are unusable ----------------------------------------------------------------


@pytest.mark.parametrize("broken", [pytest.param(b, id=b.test_id) for b in bc.BROKEN_DOWNLOADS])
def test_unusable_download(broken, corpus, tmp_path):
    root = corpus.download(broken)
    output = tmp_path / "out.zarr"
    check = invoke(ctprep, "check", "--source", broken.source, "--input", root, codes=(1,))
    result = convert(broken.source, root, output, codes=(1,))
    if broken.error is not None:  # one line, and no store
        assert result.stdout == "" and re.search(broken.error, result.stderr), result.stderr
        assert result.stderr.startswith("ctprep: error: ") and str(root) in result.stderr
        assert not output.exists()
    else:  # every case skipped with its reason: exit 1
        lines = result.stdout.splitlines()
        assert ": 0 converted, 0 already complete, 1 skipped;" in lines[0]
        assert re.search(broken.skipped, lines[1]) and str(root) in lines[1], lines[1]
        assert SliceStore.open(output).case_ids() == []
    assert check.output.strip()  # says why, in a report or one error line


# ---- one real process -------------------------------------------------------------------------------


def test_end_to_end_in_a_process_with_two_workers(corpus, tmp_path):
    """`ctprep convert` as a user runs it (a fresh interpreter, two worker processes) over the NSCLC corpus."""
    sc = corpus.sources["nsclc"]
    done = subprocess.run([sys.executable, "-m", "ctprep.cli", "convert", "--source", "nsclc", "--input",
                           str(sc.root), "--output", str(tmp_path / "nsclc.zarr"), "--workers", "2", "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for case in sc.bad:
        reported = [line for line in done.stdout.splitlines() if line.startswith(f"  skipped {case.case_id}:")]
        logged = [line for line in done.stderr.splitlines() if line.startswith(f"ctprep: skipped {case.case_id}:")]
        assert len(reported) == len(logged) == (case.outcome == "skipped"), case.what
        assert not reported or re.search(case.reason, reported[0]), reported
    assert sorted(SliceStore.open(tmp_path / "nsclc.zarr").case_ids()) == sorted(
        set(sc.good_ids) | {c.case_id for c in sc.bad if c.outcome == "converted"})
