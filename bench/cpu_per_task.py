"""The service's CPU per accepted task, this tree against another checkout, side by side.

    python -m bench.cpu_per_task --baseline /path/to/other/checkout [--seconds 20] [--repeats 2]
        [--profile DIR]

The measurement is `bench.throughput`'s service-bound configuration: a scripted server that
answers every request after L = 10 ms with short, always-new tasks, an endpoint of concurrency
64, the embedded defaults (SQLite, the starter pool, classification and instances on). The
service's process CPU (all its threads) over the middle of the run, divided by the tasks it
accepted meanwhile. Each tree runs in a subprocess of its own with its own PYTHONPATH, so the
baseline is exactly the other checkout's code; the runs alternate (baseline, this tree, ...) so
a load that comes and goes on the machine hits both alike, and the median of each is printed
with their ratio.

`--profile DIR` samples every run with py-spy (`pip install py-spy`; found on PATH or given with
`--py-spy`), writes its raw stacks to DIR and prints the functions that took the run's CPU: by
the time spent inside each (self) and below each (inclusive), counting only the threads of the
run (the event loop and the commit threads), not the setup on the main thread.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

# Runs in the measured tree: bench.throughput.measure exists in every checkout since the stream.
CHILD = """
import json, sys
from bench.throughput import measure
print(json.dumps(measure(64, 0.01, 1, float(sys.argv[1]))), flush=True)
"""


def run_tree(
    tree: Path, seconds: float, profile: Path | None, py_spy: str | None
) -> dict[str, float]:
    """One measurement of `tree` in a fresh interpreter whose imports come from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", CHILD, str(seconds)]
    if profile is not None:
        assert py_spy is not None
        command = [py_spy, "record", "-r", "200", "-f", "raw", "--nonblocking", "-o"]
        command += [str(profile), "--", sys.executable, "-c", CHILD, str(seconds)]
    out = subprocess.run(
        command, cwd=tree, env=env, check=True, capture_output=True, text=True
    ).stdout
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return dict(json.loads(lines[-1]))


def summarize(raw: Path, top: int) -> list[str]:
    """The run threads' hottest functions in a py-spy raw file, as printable lines."""
    own: collections.Counter[str] = collections.Counter()
    below: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack.startswith("Thread._bootstrap"):
            continue  # the main thread (setup) or a sample py-spy could not read
        n = int(count)
        names = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        total += n
        own[names[-1]] += n
        for name in set(names):
            below[name] += n
    lines = [f"  {total} samples in the run's threads; self:"]
    lines += [f"    {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {n / total:6.1%}  {name}" for name, n in below.most_common(top * 2)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout's root")
    parser.add_argument("--name", default=None, help="how to call the baseline, e.g. its commit")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", type=Path, default=None, help="write py-spy stacks here")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"))
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if args.profile is not None and args.py_spy is None:
        parser.error("--profile needs py-spy: pip install py-spy, or give --py-spy PATH")
    here = Path(__file__).resolve().parent.parent
    name = args.name or _commit(args.baseline)
    trees = {f"code at {name}": args.baseline.resolve(), "this tree": here}
    results: dict[str, list[dict[str, float]]] = {label: [] for label in trees}
    for i in range(args.repeats):
        for label, tree in trees.items():
            raw = None
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                raw = args.profile / f"{'base' if tree != here else 'this'}-{i}.raw"
            m = run_tree(tree, args.seconds, raw, args.py_spy)
            results[label].append(m)
            print(
                f"{label:>24}  run {i + 1}: {m['cpu_s_per_accepted'] * 1000:6.2f} ms CPU/accepted"
                f"  {m['accepted_per_s']:7.1f} accepted/s  {m['requests_per_s']:7.1f} requests/s",
                flush=True,
            )
            if raw is not None:
                print("\n".join(summarize(raw, args.top)), flush=True)
    medians = {
        label: statistics.median(m["cpu_s_per_accepted"] for m in runs)
        for label, runs in results.items()
    }
    print()
    for label, value in medians.items():
        rate = statistics.median(m["accepted_per_s"] for m in results[label])
        print(f"{label:>24}  median {value * 1000:6.2f} ms CPU/accepted  {rate:7.1f} accepted/s")
    base, this = medians[f"code at {name}"], medians["this tree"]
    print(f"{'ratio':>24}  {base / this:.2f}x less CPU per accepted task than code at {name}")


def _commit(tree: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return tree.name


if __name__ == "__main__":
    main()
