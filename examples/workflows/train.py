"""A stand-in for a training script (standard library only, runs in milliseconds).

Reads the point from input.json (lr, width, epochs, optional seed), "trains" for `epochs`
epochs and writes output.json as the evaluation contract asks: status, loss and metrics.
More epochs give a lower loss, so the longer training of the best point pays off.
"""

import json
import math
import random
from pathlib import Path

p = json.loads(Path("input.json").read_text())
lr, width, epochs = float(p["lr"]), int(p["width"]), int(p.get("epochs", 5))
rng = random.Random(p.get("seed", 0))
base = 0.1 * (math.log10(lr) + 1.5) ** 2 + 0.01 * (width - 5) ** 2
loss = base + 1.0 / epochs + rng.uniform(0, 0.005)
print(f"lr={lr:.4g} width={width} epochs={epochs}: loss {loss:.4f}", flush=True)
metrics = {"accuracy": max(0.0, 1.0 - loss), "epochs": epochs, "seed": p.get("seed")}
Path("output.json").write_text(json.dumps({"status": 0, "loss": loss, "metrics": metrics}))
