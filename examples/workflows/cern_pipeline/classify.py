"""The client: classify events with the served model (``phpo serve``), as a physicist's script
would, and compare with their labels.

    PHPO_TOKEN=... python classify.py --url http://127.0.0.1:8780 --model NAME:VERSION \\
        --data /tmp/phpo-cern/features.parquet --events 500
"""

from __future__ import annotations

import argparse
import json
import os

import httpx
import numpy as np
import pandas as pd

from dnn import FEATURES

CLASSES = ["H->ZZ", "Z->mumu", "ttbar"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True, help="NAME:VERSION")
    ap.add_argument("--data", required=True)
    ap.add_argument("--events", type=int, default=500)
    args = ap.parse_args()
    name, _, version = args.model.rpartition(":")
    df = pd.read_parquet(args.data).sample(frac=1.0, random_state=1).head(args.events)
    r = httpx.post(
        f"{args.url}/v1/models/{name}/{version}/predict",
        timeout=60,
        json={"inputs": df[FEATURES].to_numpy(np.float32).tolist()},
        headers={"Authorization": f"Bearer {os.environ['PHPO_TOKEN']}"},
    )
    r.raise_for_status()
    pred = np.asarray(r.json()["predictions"]).argmax(1)
    acc = float((pred == df["label"].to_numpy()).mean())
    counts = {c: int((pred == i).sum()) for i, c in enumerate(CLASSES)}
    print(json.dumps({"events": len(df), "accuracy": round(acc, 4), "predicted": counts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
