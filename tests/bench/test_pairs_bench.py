"""bench/pairs.py runs as README shows (a script from the repository root) and ends with its JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_pairs_bench_smallest_mode_runs_as_a_script():
    out = subprocess.run([sys.executable, "bench/pairs.py", "--sizes", "3000", "--exact-sizes", "3000",
                          "--ray-frames", "0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rows = {r["method"]: r for r in result["sizes"]}
    assert set(rows) == {"exact", "ivf"}
    assert rows["exact"]["recall_at_10"] == 1.0  # the exact miner checked by the same brute force
    assert rows["ivf"]["recall_at_10"] >= 0.95
    assert all(r["frames"] == 3000 and r["peak_rss_gb"] > 0 for r in rows.values())
    assert "3000" in result["speedup_vs_exact"]
