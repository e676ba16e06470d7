"""The expensive function of the active-learning example: f(x) = (x - 1.3)^2, read from
input.json, written to output.json as the loss (standard library only)."""

import json
from pathlib import Path

x = float(json.loads(Path("input.json").read_text())["x"])
Path("output.json").write_text(json.dumps({"status": 0, "loss": (x - 1.3) ** 2}))
