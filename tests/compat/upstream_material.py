"""The upstream documentation's own material (the panda-docs phpo page and the pchain page),
as data: the configurations, the search space and the segment file users already have."""

from __future__ import annotations

# the phpo page's search space: note the repeated category 1 (nevergrad Choice weights it)
DOCS_SEARCH_SPACE = {
    "auto_lr": {"method": "categorical", "dimension": {"categories": [True, False], "grid_search": 0}},
    "batch_size": {"method": "uniformint", "dimension": {"low": 10, "high": 30}},
    "epoch": {"method": "uniformint", "dimension": {"low": 5, "high": 10}},
    "cnn_block_depths_1": {"method": "categorical", "dimension": {"categories": [1, 1, 2], "grid_search": 0}},
    "cnn_block_depths_2": {"method": "uniformint", "dimension": {"low": 1, "high": 3}},
}

# the phpo page's config (steering in a container, the bash -c / $PWD style)
DOCS_CONFIG = {
    "evaluationContainer": "docker://gitlab-registry.cern.ch/zhangruihpc/evaluationcontainer:mlflow",
    "evaluationExec": "bash ./exec_in_container.sh",
    "evaluationMetrics": "metrics.tgz",
    "searchSpaceFile": "search_space_example2.json",
    "steeringExec": '/bin/bash -c "hpogrid generate --n_point=%NUM_POINTS --max_point=%MAX_POINTS '
    '--infile=$PWD/%IN  --outfile=$PWD/%OUT -l=nevergrad"',
    "steeringContainer": "gitlab-registry.cern.ch/zhangruihpc/steeringcontainer:latest",
    "trainingDS": "user.hoge.my_training_dataset",
}

# the pchain page's config (no steering container: the string is docker's arguments)
PCHAIN_CONFIG = {
    "evaluationContainer": "docker://gitlab-registry.cern.ch/zhangruihpc/evaluationcontainer:mlflow",
    "evaluationExec": "bash ./exec_in_container.sh",
    "evaluationMetrics": "metrics.tgz",
    "steeringExec": 'run --rm -v "$(pwd)":/HPOiDDS gitlab-registry.cern.ch/zhangruihpc/steeringcontainer:0.0.1 '
    '/bin/bash -c "hpogrid generate --n_point=%NUM_POINTS --max_point=%MAX_POINTS '
    '--infile=/HPOiDDS/%IN  --outfile=/HPOiDDS/%OUT -l nevergrad"',
}

# the phpo page's segment file: names of files in --trainingDS
DOCS_SEGMENTS = [{"files": ["file_1", "file_3"], "name": "name_A"}, {"files": ["file_2"], "name": "name_B"}]
