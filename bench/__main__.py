"""Run every benchmark, each in its own process with a time limit, and rewrite BENCHMARKS.md.

python -m bench                      # all of them, then BENCHMARKS.md
python -m bench synth transport      # only these; prints their sections, leaves the file alone
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from bench import REPO
from bench.common import BENCH_TMP, machine_facts, progress
from bench.report import code_state, document, kept_tail, section_markdown

BENCHMARKS: tuple[tuple[str, str, float, tuple[str, ...]], ...] = (
    # (result key, module, time limit in seconds, arguments)
    ("synth", "synth", 600, ()),
    ("overhead", "overhead", 600, ()),
    ("overhead_moto_in_process", "overhead", 600, ("--moto-in-process", "--repeats", "5")),
    ("transport", "transport", 1200, ()),  # the first run also installs the plugin's venv
    ("concurrency", "concurrency", 900, ()),
    ("teardown", "teardown", 600, ()),
)
OUTPUT = REPO / "BENCHMARKS.md"


def run_one(key: str, module: str, limit: float, extra: tuple[str, ...]) -> dict[str, Any]:
    out = BENCH_TMP / "results" / f"{key}.json"  # kept: the last run's figures, in full
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    progress(f"bench.{module} {' '.join(extra)}: starting (limit {limit:.0f} s)")
    command = [sys.executable, "-m", f"bench.{module}", "--json", str(out), *extra]
    try:
        done = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"key": key, "error": f"stopped after its {limit:.0f} s limit"}
    if done.returncode != 0 or not out.exists():
        return {"key": key, "error": f"exited with status {done.returncode}"}
    section: dict[str, Any] = json.loads(out.read_text())
    section["key"] = key
    return section


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    modules = sorted({module for _, module, _, _ in BENCHMARKS})
    parser.add_argument("only", nargs="*", help=f"run only these, of {', '.join(modules)}")
    args = parser.parse_args()
    if unknown := set(args.only) - set(modules):
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {modules}")
    started, code, facts = time.monotonic(), code_state(), machine_facts()
    results = {
        key: run_one(key, module, limit, extra)
        for key, module, limit, extra in BENCHMARKS
        if not args.only or module in args.only
    }
    if args.only:
        print("\n".join(section_markdown(section) for section in results.values()))
        return
    tail = kept_tail(OUTPUT.read_text()) if OUTPUT.exists() else ""
    OUTPUT.write_text(document(results, facts, (time.monotonic() - started) / 60, code) + tail)
    progress(f"wrote {OUTPUT}")
    failed = [key for key, section in results.items() if "error" in section]
    if failed:
        sys.exit(f"benchmarks that did not finish: {', '.join(failed)}")


if __name__ == "__main__":
    main()
