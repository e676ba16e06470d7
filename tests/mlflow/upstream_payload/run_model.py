"""An evaluation payload written for upstream PanDA phpo, as its documentation describes one:
MLflow with its default store (./mlruns), the point's hyperparameters logged as params, metrics
per epoch, the loss in output.json. Nothing in it knows about phpo."""

import argparse
import json
import os

import mlflow

parser = argparse.ArgumentParser()
parser.add_argument("-i", "--input", default="input.json")
parser.add_argument("--exp_dir", default="exp_scalars")
args = parser.parse_args()

with open(args.input) as f:
    point = json.load(f)
os.makedirs(args.exp_dir, exist_ok=True)

mlflow.start_run()
mlflow.log_params(point)
loss = None
for epoch in range(point["epoch"]):
    loss = 1.0 / (epoch + 1) + 0.01 * point["batch_size"] + (0.1 if point["auto_lr"] else 0.2)
    mlflow.log_metric("val_loss", loss, step=epoch)
    mlflow.log_metric("acc", 1.0 - loss / 2, step=epoch)
mlflow.log_dict(point, "point.json")
mlflow.end_run()

with open("output.json", "w") as f:
    json.dump({"status": 0, "loss": loss}, f)
