"""Mutation testing with a hand-written list of realistic bugs.

Usage (from the repository root; ``./run.sh mutants [args]`` does the same
with the project's virtualenv):

    python tools/mutate.py                 # every mutant of tools/mutants/*.py
    python tools/mutate.py stn 'coordconv-*'   # groups, ids or id globs
    python tools/mutate.py --list          # the mutants and whether each snippet is found
    python tools/mutate.py --jobs 2 --markdown docs/mutants-run.md
    python tools/mutate.py --plain         # inner functions as plain ops: faster

The repository (tracked and untracked, non-ignored files, as they are in the
working tree) is copied to a scratch directory per job, so nothing is
mutated where other people run tests. Each mutant replaces one exact snippet
(which must occur exactly once over the group's files), then the group's
tests (or the mutant's own list, its fastest killers first) run with
``pytest -x``: a failure, error or timeout kills the mutant, a pass means it
survived. The unmutated copy must pass the same tests first, once per set
of group arguments (``--no-baseline`` skips that). Not part of CI: a full
run takes an hour or more on two cores.

Exit status: 0 if every mutant found was killed, 1 if some survived or were
stale/ambiguous, 2 if the baseline failed.
"""
import argparse
import concurrent.futures
import fnmatch
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import mutants as registry  # noqa: E402


def repo_files(root):
    """Tracked and untracked, non-ignored files of the working tree (every
    file but caches when ``root`` is not a git checkout, e.g. an export)."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                             check=True, capture_output=True).stdout.decode()
        files = out.split("\0")
    except (subprocess.CalledProcessError, OSError):
        skip = {".git", "__pycache__", ".hypothesis", ".pytest_cache", ".venv"}
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in skip]
            files += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames]
    return [f for f in files if f and os.path.isfile(os.path.join(root, f))]


def make_copy(root, files):
    scratch = tempfile.mkdtemp(prefix="mutants-")
    for f in files:
        dst = os.path.join(scratch, f)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.join(root, f), dst)
    return scratch


def locate(root, mutant, group):
    """(relative path, text) of the one file holding the snippet, or a status string."""
    patterns = mutant.files or group.files
    found = []
    seen = set()
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            rel = os.path.relpath(path, root)
            if rel in seen or not os.path.isfile(path):
                continue
            seen.add(rel)
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            count = text.count(mutant.original)
            if count:
                found.append((rel, text, count))
    total = sum(c for _, _, c in found)
    if total == 0:
        return "stale"
    if total > 1:
        return "ambiguous"
    rel, text, _ = found[0]
    return rel, text


def selected(groups, patterns):
    chosen = []
    for g in groups:
        for m in g.mutants:
            if not patterns or any(p == g.name or fnmatch.fnmatchcase(m.id, p) for p in patterns):
                chosen.append((g, m))
    return chosen


def run_pytest(python, cwd, tests, timeout, plain=False):
    """(outcome, detail, seconds): outcome 'pass', 'fail' or 'timeout'."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
               TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    for var in ("SPATIAL_JIT", "STN_JIT"):
        env.pop(var, None)
    if plain:
        env["SPATIAL_JIT"] = "0"
    cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-n", "0",
           "-o", "addopts=-ra", *tests]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result after {timeout} s", time.monotonic() - start
    finally:
        shutil.rmtree(os.path.join(cwd, ".hypothesis"), ignore_errors=True)
    seconds = time.monotonic() - start
    if proc.returncode == 0:
        return "pass", "", seconds
    lines = (proc.stdout + proc.stderr).splitlines()
    first = next((l for l in lines if re.match(r"(FAILED|ERROR) ", l)), None)
    if first is None:
        first = next((l for l in reversed(lines) if l.strip()), f"exit status {proc.returncode}")
    return "fail", first[:160], seconds


def baseline_sets(runnable):
    """The baseline's pytest runs: one per distinct group arguments, over the
    union of the tests its mutants run (a node id ``file::test`` is dropped
    when ``file`` itself is listed). Mutants that list the same tests in
    another order (their fastest killers first) cost no extra baseline."""
    by_args = {}
    for g, m, _ in runnable:
        tests = by_args.setdefault(tuple(g.args), [])
        tests += [t for t in (m.tests or g.tests) if t not in tests]
    sets = []
    for args, tests in by_args.items():
        files = {t for t in tests if "::" not in t}
        sets.append((*args, *[t for t in tests if t.split("::")[0] not in files or t in files]))
    return sets


def short_test(detail):
    """'FAILED tests/test_stn.py::test_x[a] - AssertionError...' -> 'test_stn.py::test_x[a]'."""
    m = re.match(r"(?:FAILED|ERROR) (?:tests/)?(.+?)(?: - .*)?$", detail)
    return m.group(1) if m else detail


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patterns", nargs="*", help="group names, mutant ids or id globs")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run side by side")
    parser.add_argument("--timeout", type=float, default=10800.0,
                        help="seconds per pytest run (wall clock: a shared machine is slow)")
    parser.add_argument("--plain", action="store_true",
                        help="SPATIAL_JIT=0: the layers' inner functions run as plain ops "
                             "instead of being XLA-compiled for every shape (several times "
                             "faster; tests that ask for XLA still get it)")
    parser.add_argument("--python", default=sys.executable, help="interpreter running pytest")
    parser.add_argument("--no-baseline", action="store_true",
                        help="do not first run the tests on the unmutated code")
    parser.add_argument("--markdown", help="also write the result table to this file")
    parser.add_argument("--source", default=ROOT,
                        help="the code and tests to mutate (default: this working tree), e.g. "
                             "an export of an older commit: `git archive REV | tar -x -C DIR`")
    args = parser.parse_args(argv)

    groups = registry.groups()
    chosen = selected(groups, args.patterns)
    if not chosen:
        parser.error(f"no mutant matches {args.patterns}")
    source = os.path.abspath(args.source)
    located = [(g, m, locate(source, m, g)) for g, m in chosen]

    if args.list:
        for g, m, where in located:
            status = where if isinstance(where, str) else where[0]
            print(f"{m.id:40s} {status:28s} {m.description}")
        return 0

    start = time.monotonic()
    files = repo_files(source)
    runnable = [(g, m, w) for g, m, w in located if not isinstance(w, str)]
    test_sets = baseline_sets(runnable)
    scratch = [make_copy(source, files) for _ in range(max(1, args.jobs))]
    free = list(scratch)
    lock = threading.Lock()
    results = {}
    try:
        if not args.no_baseline:
            for tests in test_sets:
                outcome, detail, seconds = run_pytest(args.python, scratch[0], list(tests),
                                                      args.timeout, args.plain)
                print(f"baseline {' '.join(tests)}: {outcome} in {seconds:.0f} s", flush=True)
                if outcome != "pass":
                    print(f"the unmutated code fails its tests: {detail}", file=sys.stderr)
                    return 2

        def run_one(item):
            g, m, (rel, text) = item
            with lock:
                cwd = free.pop()
            path = os.path.join(cwd, rel)
            try:
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write(text.replace(m.original, m.replacement, 1))
                outcome, detail, seconds = run_pytest(args.python, cwd,
                                                      [*g.args, *(m.tests or g.tests)],
                                                      args.timeout, args.plain)
            finally:
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write(text)
                with lock:
                    free.append(cwd)
            status = "survived" if outcome == "pass" else "killed"
            by = "" if outcome == "pass" else ("timeout" if outcome == "timeout"
                                                else short_test(detail))
            with lock:
                results[m.id] = (status, by, seconds)
                print(f"{status:8s} {m.id:40s} {seconds:6.0f} s  {by}", flush=True)

        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(run_one, runnable))
    finally:
        for d in scratch:
            shutil.rmtree(d, ignore_errors=True)

    rows = []
    for g, m, where in located:
        if isinstance(where, str):
            rows.append((m.id, "-", where, "", m.description))
        else:
            status, by, _ = results[m.id]
            rows.append((m.id, where[0], status, by, m.description))
    counts = {s: sum(r[2] == s for r in rows) for s in ("killed", "survived", "stale", "ambiguous")}
    found = counts["killed"] + counts["survived"]
    summary = (f"{counts['killed']} of {found} mutants killed, {counts['survived']} survived"
               f", {counts['stale']} stale, {counts['ambiguous']} ambiguous"
               f" ({(time.monotonic() - start) / 60:.0f} min)")
    table = ["| mutant | file | result | killed by | bug |", "| --- | --- | --- | --- | --- |"]
    table += [f"| {i} | {f} | {s} | {b} | {d} |" for i, f, s, b, d in rows]
    print("\n" + "\n".join(table) + "\n\n" + summary)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write("\n".join(table) + "\n\n" + summary + "\n")
    return 0 if counts["killed"] == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
