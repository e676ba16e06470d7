"""Payload scripts of the serving tests: each point trains (builds) a small model whose outputs
tell which point it came from, hands it to phpo with sdk.save_model, and reports a loss that
makes x == 2 the best point."""

TORCH = """\
import torch
from phpo.evaluation_container import sdk

p = sdk.load_point()
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
with torch.no_grad():
    net[2].bias.fill_(100.0 * p["x"])  # the point's model answers ~100*x: it can be told apart
sdk.save_model(net)
sdk.report(float((p["x"] - 2) ** 2))
"""

# argv[1]: the segment's name (%SEGMENT_NAME); segment "a" learns y = x*f0, segment "b" y = -x*f0
SKLEARN = """\
import sys
import numpy as np
from sklearn.linear_model import LinearRegression
from phpo.evaluation_container import sdk

p = sdk.load_point()
sign = 1.0 if sys.argv[1] == "a" else -1.0
X = np.random.default_rng(0).random((40, 3))
model = LinearRegression().fit(X, sign * p["x"] * X[:, 0])
sdk.save_model(model, input_example=X[:2])
sdk.report(float((p["x"] - 2) ** 2))
"""

# a payload that logs its model with MLflow itself and one that saves none
OWN_MLFLOW = """\
import mlflow, mlflow.sklearn
import numpy as np
from sklearn.linear_model import LinearRegression
from phpo.evaluation_container import sdk

p = sdk.load_point()
X = np.arange(12.0).reshape(4, 3)
with mlflow.start_run():
    mlflow.sklearn.log_model(LinearRegression().fit(X, p["x"] * X[:, 1]), name="reg", pip_requirements=[])
sdk.report(float((p["x"] - 2) ** 2))
"""

NO_MODEL = "from phpo.evaluation_container import sdk; sdk.report(float(sdk.load_point()['x']))"
