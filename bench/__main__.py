"""Run every benchmark at one commit, each in its own process with a time limit; keep the raw
results in bench/results/<commit>.json and write BENCHMARKS.md from them.

python -m bench                      # all of them, then the JSON and BENCHMARKS.md
python -m bench synth transport      # only these; prints their sections, keeps nothing
python -m bench --merge sweep        # only these, into this commit's kept run, then the file
python -m bench --report             # BENCHMARKS.md again from bench/results/, running nothing
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import REPO
from bench.common import BENCH_TMP, load_average, machine_facts, progress
from bench.report import RESULTS, code_state, document, load_runs, results_file, section_markdown

BENCHMARKS: tuple[tuple[str, str, float, tuple[str, ...]], ...] = (
    # (result key, module, time limit in seconds, arguments)
    ("synth", "synth", 600, ("--repeats", "2")),
    ("overhead", "overhead", 600, ("--repeats", "5")),
    ("overhead_moto_in_process", "overhead", 600, ("--moto-in-process", "--repeats", "3")),
    ("transport", "transport", 1200, ("--repeats", "3")),  # a first run installs the plugin
    ("concurrency", "concurrency", 900, ("--repeats", "3")),
    ("teardown", "teardown", 600, ("--repeats", "3")),
    ("warm", "warm", 600, ()),
    ("cold_start", "cold_start", 1200, ("--repeats", "1")),
    ("guests", "guests", 900, ()),
    ("sweep", "sweep", 1500, ()),
)
"""Repeats are kept low: a whole run fits in about half an hour on two shared cores."""
OUTPUT = REPO / "BENCHMARKS.md"


def run_one(key: str, module: str, limit: float, extra: tuple[str, ...]) -> dict[str, Any]:
    out = BENCH_TMP / "results" / f"{key}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    progress(f"bench.{module} {' '.join(extra)}: starting (limit {limit:.0f} s)")
    command = [sys.executable, "-m", f"bench.{module}", "--json", str(out), *extra]
    before = load_average()
    try:
        done = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, timeout=limit)
    except subprocess.TimeoutExpired:
        section: dict[str, Any] = {"error": f"stopped after its {limit:.0f} s limit"}
    else:
        if done.returncode != 0 or not out.exists():
            section = {"error": f"exited with status {done.returncode}"}
        else:
            section = json.loads(out.read_text())
    section["key"] = key
    section.setdefault("load", [before, load_average()])
    return section


def save(path: Path, run: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(run, separators=(",", ":"), default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    keys = [key for key, _, _, _ in BENCHMARKS]
    parser.add_argument("only", nargs="*", help=f"run only these, of {', '.join(keys)}")
    parser.add_argument("--merge", action="store_true", help="keep them in this commit's run")
    parser.add_argument("--report", action="store_true", help="only rewrite BENCHMARKS.md")
    args = parser.parse_args()
    if unknown := set(args.only) - set(keys):
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {keys}")
    if args.report:
        OUTPUT.write_text(document(load_runs()))
        return
    code = code_state()
    path = results_file(code["commit"])
    if args.merge and not path.exists():
        parser.error(f"--merge: no kept run at this commit ({path}); run `python -m bench` first")
    started, stamp = time.monotonic(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    kept: dict[str, Any] = (
        json.loads(path.read_text())
        if args.merge
        else {**code, "started": stamp, "machine": machine_facts(), "sections": {}}
    )
    if args.merge and kept["local_changes"] != code["local_changes"]:
        parser.error("--merge: the code differs from the kept run's; run them all again")
    earlier_minutes = kept.get("minutes", 0.0) if args.merge else 0.0
    for key, module, limit, extra in BENCHMARKS:
        if args.only and key not in args.only:
            continue
        section = run_one(key, module, limit, extra)
        if args.only and not args.merge:
            print(section_markdown(section))
            continue
        kept["sections"][key] = section
        kept["minutes"] = earlier_minutes + (time.monotonic() - started) / 60
        save(path, kept)  # after each one: a run cut short keeps what it measured
    if args.only and not args.merge:
        return
    kept["sections"] = {k: kept["sections"][k] for k in keys if k in kept["sections"]}
    save(path, kept)
    OUTPUT.write_text(document(load_runs()))
    progress(f"wrote {path.relative_to(REPO)} and {OUTPUT.name}")
    failed = [key for key, section in kept["sections"].items() if "error" in section]
    if failed:
        sys.exit(f"benchmarks that did not finish: {', '.join(failed)}")


if __name__ == "__main__":
    main()
