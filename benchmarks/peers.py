"""What the benchmarks share to run a peer (TRL) beside alignloop in one invocation:

- `peer_python`: the peer's own virtual environment, made on first use (torch pinned first,
  so pip does not pull CUDA wheels; alignloop installed into it without dependencies, for its
  data helpers), or the python given on the command line;
- `report` / `run_child`: each trainer runs in its own process (so its peak RSS is its own);
  the child prints one `RESULT {json}` line with its peak RSS added, the parent parses it.
"""

from __future__ import annotations

import json
import resource
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "RESULT "


def peer_python(given: str | None, env: Path, packages: list[str]) -> str | None:
    """`given`, else env/bin/python, made here on first use with torch 2.13.0 then `packages`."""
    if given:
        return given
    python = env / "bin" / "python"
    if not python.exists():
        print(f"making {env} (torch 2.13.0, {' '.join(packages)}) ...", flush=True)
        pip = [str(env / "bin" / "pip"), "install", "-q"]
        for cmd in (["python3", "-m", "venv", str(env)], pip + ["torch==2.13.0"], pip + packages,
                    pip + ["--no-deps", "-e", str(ROOT)]):
            if subprocess.run(cmd).returncode != 0:
                print(f"could not make the peer's environment ({' '.join(cmd)})")
                return None
    return str(python)


def report(result: dict) -> None:
    """In a child: print its result with this process's peak RSS (GB)."""
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(PREFIX + json.dumps(result), flush=True)


def run_child(python: str, argv: list[str], label: str) -> dict | None:
    """Run `python argv...` and return its RESULT; None (with its stderr's end printed) if it failed."""
    r = subprocess.run([python, *argv], capture_output=True, text=True)
    line = [x for x in r.stdout.splitlines() if x.startswith(PREFIX)]
    if r.returncode != 0 or not line:
        print(f"{label}: failed\n{r.stderr[-3000:]}")
        return None
    return json.loads(line[-1][len(PREFIX):])
