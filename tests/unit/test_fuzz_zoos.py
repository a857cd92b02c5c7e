"""The zoo readers against a generated corpus of damaged and hostile zoos (tests/fuzz_zoos.py), no Ray.

Every zoo is listed and read in-process. For every case: no exception other than a one-line ZooError
for a zoo that cannot be used; the outcome the case expects (valid and legitimately-still-valid
checkpoints accepted, every damaged one rejected with a reason that names the damage); accepted +
rejected == listed, with exactly the ids the corpus holds; no pickle payload ran; nothing was written
anywhere in pytest's temporary tree but the test's own output folder; and reading one zoo stayed
within a memory bound far below the terabytes its headers may claim. ``SNE_FUZZ_SEED`` picks another
corpus; ``-s`` shows the case counts, which the test also writes to ``<tmp>/fuzz*/out/counts.json``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import time
import tracemalloc
from collections import Counter

import fuzz_zoos
import pytest

from pipeline.zoo import Checkpoint, Rejection, ZooError, open_zoo, read_part, validate

# Peak of Python-visible allocations (numpy buffers included) while one zoo is listed and read.
TRACED_BOUND = 64 * 2**20
# Growth of the resident-set high-water mark while one zoo is read: catches what torch and Arrow
# allocate outside tracemalloc's view.
RSS_BOUND = 96 * 2**20
MIN_CASES = 500

pytestmark = pytest.mark.filterwarnings(
    "ignore:Detected pickle protocol",  # torch's note on the bare pickles
    "ignore:overflow encountered in cast",  # float64 bytes read as float32 (the relabelled-f8 folder)
)


@pytest.fixture(scope="module")
def seed() -> int:
    return int(os.environ.get(fuzz_zoos.SEED_ENV, fuzz_zoos.DEFAULT_SEED))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, seed):
    """(test folder, corpus root, cases): the corpus lies in <test folder>/corpus."""
    base = tmp_path_factory.mktemp("fuzz")
    started = time.perf_counter()
    cases = fuzz_zoos.write_corpus(base / "corpus", seed)
    print(f"\ncorpus (seed {seed}) written in {time.perf_counter() - started:.1f} s")
    return base, base / "corpus", cases


def _tree(base: str, skip: str) -> dict[bytes, tuple]:
    """{relative path: (kind, size, mtime_ns)} of everything under ``base`` but ``skip``, links unfollowed."""
    out = {}
    root = os.fsencode(base)
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(folder, d) != os.fsencode(skip)]
        for name in [b"", *dirnames, *filenames]:
            path = os.path.join(folder, name) if name else folder
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


def _rss_reset() -> bool:
    """Reset this process's resident high-water mark (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _read(uri: str, fmt: str):
    """(ZooError message or None, listed ids, items) for one zoo, parts passed through JSON as a task gets them."""
    try:
        listing = open_zoo(uri, fmt)
    except ZooError as e:
        return str(e), [], []
    listed = [cid for part in listing.parts for cid in part["ids"]]
    items = [item for part in listing.parts for item in read_part(json.loads(json.dumps(part)))]
    assert len(listed) == listing.num_listed
    return None, listed, items


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _check_zoo(cases: list, error: str | None, listed: list[str], items: list) -> list[str]:
    """What is wrong with one zoo's outcome, as lines (empty when every case came out as expected)."""
    problems = []
    want_error = [c for c in cases if c.expect == fuzz_zoos.ZOO_ERROR]
    if error is not None:
        if not want_error:
            return [f"unexpected ZooError: {error}"]
        if not error.strip() or "\n" in error.strip():
            problems.append(f"ZooError message is empty or not one line: {error!r}")
        problems += [
            f"{c.mutation}: ZooError {error!r} does not match {c.reason!r}"
            for c in want_error
            if not re.search(c.reason, error)
        ]
        return problems
    if want_error:
        return [f"{c.mutation}: expected a ZooError, the zoo listed {len(listed)}" for c in want_error]

    produced = Counter(item.id for item in items)
    if produced != Counter(listed):
        problems.append(
            f"read ids differ from listed ids: {sorted((produced - Counter(listed)) + (Counter(listed) - produced))[:5]}"
        )
    expected = Counter(c.id for c in cases)
    if Counter(listed) != expected:
        extra, missing = Counter(listed) - expected, expected - Counter(listed)
        problems.append(
            f"listed ids differ from the corpus: unexpected {sorted(extra)[:5]}, missing {sorted(missing)[:5]}"
        )

    outcomes: dict[str, list] = {}
    for item in items:
        outcomes.setdefault(item.id, []).append(item)
        if not _utf8(item.id):
            problems.append(f"id {item.id!r} is not valid UTF-8 (cannot be printed or stored)")
        if isinstance(item, Rejection):
            if not item.reason.strip() or not _utf8(item.reason):
                problems.append(f"{item.id!r}: empty or unprintable reason {item.reason!r}")
        elif isinstance(item, Checkpoint):
            if validate(item) is not None:
                problems.append(f"{item.id!r}: accepted, but validate() says {validate(item)}")
        else:
            problems.append(f"{item!r} is neither a Checkpoint nor a Rejection")
    by_id: dict[str, list] = {}
    for c in cases:
        by_id.setdefault(c.id, []).append(c)
    for cid, want in by_id.items():
        got = outcomes.get(cid, [])
        got_accepted = sum(isinstance(x, Checkpoint) for x in got)
        want_accepted = sum(c.expect == fuzz_zoos.ACCEPTED for c in want)
        reasons = [x.reason for x in got if isinstance(x, Rejection)]
        if got_accepted != want_accepted or len(got) != len(want):
            kinds = ", ".join(sorted({c.mutation for c in want}))
            problems.append(
                f"{kinds} {cid!r}: expected {want_accepted} of {len(want)} accepted, got {got_accepted} of "
                f"{len(got)}; reasons {reasons}"
            )
            continue
        for c in want:
            if c.expect == fuzz_zoos.REJECTED and not any(re.search(c.reason, r) for r in reasons):
                problems.append(
                    f"{c.mutation} {cid!r}: reasons {reasons} do not match {c.reason!r} ({c.detail})"
                )
    return problems


def test_the_same_seed_writes_a_byte_identical_corpus_and_another_seed_another(corpus, seed, tmp_path):
    _, root, cases = corpus
    again = fuzz_zoos.write_corpus(tmp_path / "again", seed)
    assert again == cases
    assert fuzz_zoos.corpus_digest(tmp_path / "again") == fuzz_zoos.corpus_digest(root)
    other = fuzz_zoos.write_corpus(tmp_path / "other", seed + 1)
    assert fuzz_zoos.corpus_digest(tmp_path / "other") != fuzz_zoos.corpus_digest(root)
    assert len(other) == len(cases)  # the same plan, other random choices


def test_the_payloads_are_live(tmp_path, monkeypatch):
    """A full unpickle runs each payload: their markers not appearing while reading proves something."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(fuzz_zoos.MARKER_ENV, str(tmp_path / "marker"))
    for style in fuzz_zoos.PAYLOAD_STYLES:
        pickle.loads(fuzz_zoos.payload_pickle(style))
    made = [p for p in fuzz_zoos.marker_paths(str(tmp_path / "marker"), str(tmp_path)) if os.path.exists(p)]
    assert len(made) == len(fuzz_zoos.PAYLOAD_STYLES), made


def test_every_case_is_read_as_expected_and_nothing_unsafe_happens(corpus, monkeypatch, tmp_path_factory):
    base, root, cases = corpus
    assert len(cases) >= MIN_CASES
    out = base / "out"  # the only place this test writes (its counts); reading must write nothing at all
    work = base / "work"
    out.mkdir()
    work.mkdir()
    marker = str(base / "marker")
    monkeypatch.chdir(work)  # a payload that writes a relative path would write here
    monkeypatch.setenv(fuzz_zoos.MARKER_ENV, marker)
    watched = str(tmp_path_factory.getbasetemp())  # every test's folder, the corpus's among them
    before = _tree(watched, skip=str(out))
    measure_rss = _rss_reset()

    failures: list[str] = []
    outcome_counts: Counter = Counter()
    peaks: dict[str, tuple[int, int]] = {}
    started = time.perf_counter()
    tracemalloc.start()
    try:
        for (fmt, zoo), zoo_cases in fuzz_zoos.zoos(cases).items():
            tracemalloc.reset_peak()
            traced_before = tracemalloc.get_traced_memory()[0]
            if measure_rss:
                _rss_reset()
                rss_before = _status_kib("VmRSS")
            try:
                error, listed, items = _read(str(root / zoo), fmt)
            except Exception as e:  # any exception but ZooError is a reader bug
                failures.append(f"{zoo}: unhandled {type(e).__name__}: {e}")
                continue
            traced = tracemalloc.get_traced_memory()[1] - traced_before
            rss = (_status_kib("VmHWM") - rss_before) * 1024 if measure_rss else 0
            peaks[zoo] = (traced, rss)
            if traced > TRACED_BOUND or rss > RSS_BOUND:
                failures.append(
                    f"{zoo}: reading peaked at {traced / 2**20:.0f} MiB traced, {rss / 2**20:.0f} MiB resident"
                )
            failures += [f"{zoo}: {p}" for p in _check_zoo(zoo_cases, error, listed, items)]
            if error is not None:
                outcome_counts[fuzz_zoos.ZOO_ERROR] += 1
            else:
                outcome_counts[fuzz_zoos.ACCEPTED] += sum(isinstance(x, Checkpoint) for x in items)
                outcome_counts[fuzz_zoos.REJECTED] += sum(isinstance(x, Rejection) for x in items)
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started

    ran = [p for p in fuzz_zoos.marker_paths(marker, str(work)) if os.path.lexists(p)]
    assert not ran, f"a pickle payload ran: {ran}"
    after = _tree(watched, skip=str(out))
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"reading wrote to disk: {changed[:10]}"
    assert not failures, f"{len(failures)} problem(s):\n" + "\n".join(failures)
    assert dict(outcome_counts) == {o: n for o, n in fuzz_zoos.case_counts(cases)["per_outcome"].items() if n}

    counts = {**fuzz_zoos.case_counts(cases), "observed": dict(outcome_counts), "read_seconds": elapsed}
    (out / "counts.json").write_text(json.dumps(counts, indent=1) + "\n")
    worst = max(peaks, key=lambda z: peaks[z][0])
    print(f"\n{fuzz_zoos.format_counts(cases)}")
    print(
        f"read {len(peaks)} zoos in {elapsed:.1f} s: "
        + ", ".join(f"{n} {o}" for o, n in sorted(outcome_counts.items()))
        + f"; largest traced peak {peaks[worst][0] / 2**20:.1f} MiB ({worst}), largest resident growth "
        f"{max(r for _, r in peaks.values()) / 2**20:.1f} MiB"
    )
