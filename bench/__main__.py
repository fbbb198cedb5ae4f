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
from bench.report import code_state, render_document

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
KEPT = BENCH_TMP / "results"
"""The last run's JSON, one file per benchmark, for a closer look."""


def run_one(key: str, module: str, limit: float, extra: list[str]) -> dict[str, Any]:
    KEPT.mkdir(parents=True, exist_ok=True)
    out = KEPT / f"{key}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", f"bench.{module}", "--json", str(out), *extra]
    progress(f"{' '.join(command[2:3] + extra)}: starting (limit {limit:.0f} s)")
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=REPO, stdout=subprocess.PIPE, text=True, timeout=limit, check=False
        )
    except subprocess.TimeoutExpired:
        return {"key": key, "error": f"stopped after its {limit:.0f} s limit"}
    seconds = time.monotonic() - started
    if done.returncode != 0 or not out.exists():
        return {"key": key, "error": f"exited with status {done.returncode}", "seconds": seconds}
    section: dict[str, Any] = json.loads(out.read_text())
    progress(f"bench.{module}: done in {seconds:.0f} s")
    return section


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("only", nargs="*", help="run only these benchmarks (no file written)")
    parser.add_argument("--no-install", action="store_true", help="skip the pip/uv install")
    args = parser.parse_args()
    keys = sorted({module for _, module, _, _ in BENCHMARKS})
    unknown = [name for name in args.only if name not in [*keys, "paper"]]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {[*keys, 'paper']}")
    started = time.monotonic()
    code_before = code_state()
    facts = machine_facts()
    results: dict[str, Any] = {}
    for key, module, limit, extra in BENCHMARKS:
        if args.only and module not in args.only:
            continue
        results[key] = run_one(key, module, limit, list(extra))
    if not args.only or "paper" in args.only:
        KEPT.mkdir(parents=True, exist_ok=True)
        (KEPT / "all.json").write_text(json.dumps(results, default=str))
        paper_args = ["--results", str(KEPT / "all.json")]
        if args.no_install:
            paper_args.append("--no-install")
        results["paper"] = run_one("paper", "paper", 600, paper_args)
    code = (code_before, code_state())
    document = render_document(results, facts, time.monotonic() - started, args.only, code)
    if args.only:
        print(document)
        return
    OUTPUT.write_text(document)
    progress(f"wrote {OUTPUT}")
    failed = [key for key, section in results.items() if "error" in section]
    if failed:
        sys.exit(f"benchmarks that did not finish: {', '.join(failed)}")


if __name__ == "__main__":
    main()
