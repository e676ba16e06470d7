#!/bin/bash
# The evaluation as an upstream evaluation container runs it (docs/payloads.md): the point is in
# input.json, the training file list in input_ds.json; the script writes output.json.
set -e
python ./train.py --input input.json --training-data input_ds.json --output output.json
