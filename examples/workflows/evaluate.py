"""Evaluates a round of the active-learning example and proposes the next search window.

Input: the round's best x and its window [low, high]. Output metrics: `error` (how far the
candidate is from the truth, measured on held-out labels; here the known optimum 1.3) and the
next, narrower window centred on the candidate. The loop's `while` reads `error` to decide
whether another round is worth it.
"""

import json
from pathlib import Path

p = json.loads(Path("input.json").read_text())
x, low, high = float(p["x"]), float(p["low"]), float(p["high"])
quarter = (high - low) / 4
error = abs(x - 1.3)
print(f"round {p.get('round')}: x={x:.4f} in [{low:.3f}, {high:.3f}], error {error:.4f}", flush=True)
metrics = {"error": error, "x": x, "next_low": x - quarter, "next_high": x + quarter}
Path("output.json").write_text(json.dumps({"status": 0, "loss": error, "metrics": metrics}))
