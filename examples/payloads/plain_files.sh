#!/bin/sh
# A payload without the SDK (any language works): read the point from input.json, write
# {"status": 0, "loss": ...} to output.json (docs/payloads.md). Needs only a POSIX shell and sed,
# so it also runs in a minimal container image (--evaluationContainer).
x=$(sed 's/[^0-9.-]//g' input.json)
echo "evaluating x=$x" >&2
echo "{\"status\": 0, \"loss\": $x}" > output.json
