"""The parts of the MLflow bridge (:class:`phpo.server.services.mlflow_bridge.MlflowBridge`):
runs and their sync machine (:mod:`.runs`, with ``STATUS``), artifacts (:mod:`.artifacts`),
``mlruns/`` tarball import (:mod:`.mlruns_import`), and what they share (:mod:`.common`)."""
