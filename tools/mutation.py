"""Mutation testing of models/, code/ and training/ with cosmic-ray, on a seeded sample of mutants.

    python tools/mutation.py --size 150 --seed 0            # docs/mutation-testing.md

Copies the repository (tracked files and untracked ones git does not ignore) to a scratch folder, makes one
cosmic-ray session per source file listed in tools/mutation.toml (with the fast tests listed for it), samples
`size` mutants spread evenly over the packages (uniformly within each), marks the others skipped, checks that
each file's tests pass unmutated, runs `cosmic-ray exec`, and prints per-package counts and every survivor.
Survivors listed in tools/mutation-equivalent.csv are counted as equivalent, not as survivors.
"""
from __future__ import annotations

import argparse
import ast
import csv
import fnmatch
import json
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import threading
import tomllib
from collections import Counter
from pathlib import Path
from queue import Empty, Queue

try:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult
except ImportError:
    sys.exit("tools/mutation.py needs cosmic-ray: pip install -r requirements-dev.txt")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tools" / "mutation.toml"
EQUIVALENT = ROOT / "tools" / "mutation-equivalent.csv"
COSMIC_RAY = str(Path(sys.executable).with_name("cosmic-ray"))
STATUSES = ("killed", "timeout", "survived", "equivalent", "error")


def toml_value(v) -> str:
    return json.dumps(v) if isinstance(v, (str, float, int)) else "[" + ", ".join(map(toml_value, v)) + "]"


def write_session_config(path: Path, module: str, command: str, timeout: float, exclude: list[str]) -> None:
    path.write_text(f"[cosmic-ray]\nmodule-path = {toml_value(module)}\ntimeout = {timeout}\n"
                    f"excluded-modules = []\ntest-command = {toml_value(command)}\n\n"
                    f"[cosmic-ray.distributor]\nname = \"local\"\n\n"
                    f"[cosmic-ray.filters.operators-filter]\nexclude-operators = {toml_value(exclude)}\n")


def copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the annotations are: with `from __future__ import annotations` they are never evaluated, so a
    mutant inside one (`str | None` -> `str & None`) is equivalent by construction."""
    spans = []
    for node in ast.walk(ast.parse(path.read_text())):
        notes = [getattr(node, "annotation", None), getattr(node, "returns", None)]
        spans += [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in notes if a is not None]
    return spans


def changed_lines(diff: str) -> tuple[str, str]:
    """The removed and the added lines of a diff, each joined; a pure removal (a decorator) gets the line after it
    on both sides, so that the key says which one was removed."""
    body = [ln for ln in diff.splitlines() if ln[:1] in " +-" and ln[:3] not in ("+++", "---")]
    side = {sign: " ".join(ln[1:].strip() for ln in body if ln[0] == sign and ln[1:].strip()) for sign in "-+"}
    if not side["+"]:
        last = max(i for i, ln in enumerate(body) if ln[0] == "-")
        after = next((ln[1:].strip() for ln in body[last + 1:] if ln[1:].strip()), "")
        side = {"-": f"{side['-']} {after}".strip(), "+": after}
    return side["-"], side["+"]


def load_equivalent() -> set[tuple[str, str, str]]:
    if not EQUIVALENT.exists():
        return set()
    with EQUIVALENT.open(newline="") as f:
        return {(r["file"], r["before"].strip(), r["after"].strip()) for r in csv.DictReader(f)}


def status_of(result: WorkResult, key: tuple[str, str, str], equivalent: set) -> str:
    if result.worker_outcome != WorkerOutcome.NORMAL or result.test_outcome == TestOutcome.INCOMPETENT:
        return "error"
    if result.test_outcome == TestOutcome.KILLED:
        return "timeout" if result.output == "timeout" else "killed"
    return "equivalent" if key in equivalent else "survived"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=150, help="mutants to sample, spread evenly over the packages")
    p.add_argument("--seed", type=int, default=0, help="the sample is a function of the seed and the source")
    p.add_argument("--only", default="*", help="run only the sampled mutants of files matching this glob")
    p.add_argument("--recheck", type=Path, help="run only the mutants that survived in this earlier report.json")
    p.add_argument("--jobs", type=int, default=1, help="files run in parallel, each in its own copy")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary one, kept); an existing "
                                                "one resumes its run")
    args = p.parse_args(argv)
    if args.size < 1 or args.jobs < 1:
        p.error("--size and --jobs must be at least 1")
    if args.recheck and not args.recheck.is_file():
        p.error(f"--recheck {args.recheck}: no such report (it is <workdir>/report.json of an earlier run)")
    cfg = tomllib.loads(CONFIG.read_text())
    exclude = cfg["cosmic-ray"]["filters"]["operators-filter"]["exclude-operators"]
    excluded = re.compile("|".join(f"(?:{e})" for e in exclude))
    files: dict[str, list[str]] = cfg["mutation"]["tests"]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mutation-"))
    work.mkdir(parents=True, exist_ok=True)
    copy_tree(work)
    sessions = work / ".mutation"
    sessions.mkdir(exist_ok=True)
    recheck = None
    if args.recheck:
        recheck = {(m["file"], m["operator"], m["occurrence"]) for m in json.loads(args.recheck.read_text())["mutants"]
                   if m["status"] == "survived"}

    # one session per file; every mutant of every file, in a stable order
    population: dict[str, list] = {}
    for file in files:
        spans = annotation_spans(work / file)
        slug = file.replace("/", "__")
        if not (sessions / f"{slug}.sqlite").exists():  # else resume an interrupted run in the same --workdir
            write_session_config(sessions / f"{slug}.toml", file, "true", 1.0, exclude)
            subprocess.run([COSMIC_RAY, "init", f".mutation/{slug}.toml", f".mutation/{slug}.sqlite"], cwd=work,
                           check=True)
        with use_db(str(sessions / f"{slug}.sqlite"), WorkDB.Mode.open) as db:
            for item in db.work_items:
                m = item.mutations[0]
                at = tuple(m.start_pos)
                if not excluded.match(m.operator_name) and not any(a <= at < b for a, b in spans):
                    population.setdefault(file.split("/")[0], []).append((file, m.operator_name, m.occurrence,
                                                                          item.job_id))
    packages = sorted(population)
    sample: set[str] = set()
    chosen: dict[str, tuple] = {}  # the sample, before --only and --recheck
    for i, pkg in enumerate(packages):
        share = args.size // len(packages) + (i < args.size % len(packages))
        items = sorted(population[pkg])
        for it in random.Random(f"{args.seed}:{pkg}").sample(items, min(share, len(items))):
            if fnmatch.fnmatch(it[0], args.only) and (recheck is None or it[:3] in recheck):
                sample.add(it[3])
            chosen[it[3]] = it
    lost = len((recheck or set()) - {c[:3] for c in chosen.values()})
    if lost > 0:
        print(f"{lost} survivors of {args.recheck} are not in this sample: the source changed since that run")
    print(f"sample: seed {args.seed}, " + ", ".join(
        f"{pkg} {sum(c[0].startswith(pkg + '/') for c in chosen.values())} of {len(population[pkg])}"
        for pkg in packages) + f"; running {len(sample)} in {work}", flush=True)

    todo, pending = [], {}
    for file in files:
        with use_db(str(sessions / f"{file.replace('/', '__')}.sqlite"), WorkDB.Mode.open) as db:
            skip = [it.job_id for it in db.pending_work_items if it.job_id not in sample]
            db.set_multiple_results(skip, WorkResult(output="not sampled", worker_outcome=WorkerOutcome.SKIPPED))
            pending[file] = db.num_work_items - db.num_results
            todo += [file] * (pending[file] > 0)
    queue = Queue()
    for file in sorted(todo, key=lambda f: -pending[f]):  # the longest first
        queue.put(file)
    failures: list[str] = []

    def worker(k: int) -> None:
        copy = work / f".job{k}"  # a copy per worker: a mutant must not leak into another file's tests
        copy_tree(copy)
        while not failures:
            try:
                file = queue.get_nowait()
            except Empty:
                return
            failure = run_file(file, files[file], cfg, sessions, copy, exclude)
            if failure:
                failures.append(failure)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(max(1, min(args.jobs, len(todo))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.exit(failures[0])
    earlier = [] if recheck is None else [m for m in json.loads(args.recheck.read_text())["mutants"]
                                          if (m["file"], m["operator"], m["occurrence"]) not in recheck]
    return report(work, files, sample, earlier)


def run_file(file: str, tests: list[str], cfg: dict, sessions: Path, copy: Path, exclude: list[str]) -> str | None:
    """Check that the file's tests pass unmutated in `copy`, then run its session there; a message on failure."""
    slug = file.replace("/", "__")
    tests = [t for t in tests if t.startswith("-") or not t.startswith("tests/") or (copy / t.split("::")[0]).exists()]
    command = cfg["mutation"]["pytest"].replace("python", shlex.quote(sys.executable), 1) + " " + shlex.join(tests)
    start = time.perf_counter()
    clean = subprocess.run(shlex.split(command), cwd=copy, capture_output=True, text=True)
    if clean.returncode != 0:
        print(clean.stdout[-3000:], clean.stderr[-3000:])
        return f"the tests of {file} fail without a mutant: fix them first ({command})"
    timeout = round((time.perf_counter() - start) * cfg["mutation"]["timeout_factor"]
                    + cfg["mutation"]["timeout_extra"], 1)
    write_session_config(sessions / f"{slug}.toml", file, command, timeout, exclude)
    print(f"{file}: clean run {time.perf_counter() - start:.1f} s, timeout {timeout} s", flush=True)
    subprocess.run([COSMIC_RAY, "exec", str(sessions / f"{slug}.toml"), str(sessions / f"{slug}.sqlite")], cwd=copy,
                   check=True)
    return None


def report(work: Path, files: dict, sample: set, earlier: list[dict]) -> int:
    """Counts per package; with --recheck, the earlier report's mutants that were not rerun keep their status."""
    equivalent = load_equivalent()
    counts: dict[str, Counter] = {}
    mutants, survivors = [], []
    for m in earlier:
        counts.setdefault(m["file"].split("/")[0], Counter())[m["status"]] += 1
        mutants.append(m)
    for file in files:
        with use_db(str(work / ".mutation" / f"{file.replace('/', '__')}.sqlite"), WorkDB.Mode.open) as db:
            for item, result in db.completed_work_items:
                if item.job_id not in sample:
                    continue
                m = item.mutations[0]
                before, after = changed_lines(result.diff or "")
                status = status_of(result, (file, before, after), equivalent)
                counts.setdefault(file.split("/")[0], Counter())[status] += 1
                mutants.append(dict(file=file, operator=m.operator_name, occurrence=m.occurrence,
                                    line=m.start_pos[0], status=status, before=before, after=after))
                if status in ("survived", "error"):
                    survivors.append(f"## {status}: {file}:{m.start_pos[0]} {m.operator_name} #{m.occurrence}\n"
                                     f"{result.diff}\n" + (result.output[-2000:] if status == "error" else ""))
    (work / "report.json").write_text(json.dumps(dict(mutants=mutants), indent=1))
    (work / "survivors.md").write_text("\n".join(survivors))
    print(f"\n| package | sampled | {' | '.join(STATUSES)} | killed of non-equivalent |\n|---|" + "---|" * 7)
    for pkg, c in sorted(counts.items()):
        live = c["killed"] + c["timeout"] + c["survived"] + c["error"]
        score = f"{100 * (c['killed'] + c['timeout']) / live:.0f}%" if live else "-"
        print(f"| {pkg} | {sum(c.values())} | {' | '.join(str(c[s]) for s in STATUSES)} | {score} |")
    print(f"\nsurvivors and errors: {work / 'survivors.md'}; every mutant: {work / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
