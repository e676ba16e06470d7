"""phpo.serving: ``phpo serve``, an inference service for the models phpo registered in MLflow.

TFaaS's use, over HTTP: name (or upload) a model, ``POST`` a batch of feature vectors as JSON,
get the predictions back; list the models and read their metadata. A real ASGI server (uvicorn,
``--workers N``), concurrent requests to one model micro-batched into one call of the model,
bearer tokens checked against the phpo server (same roles), ``/health`` and ``/metrics``
(Prometheus text). docs/serving.md is the user's guide; imports schemas only of phpo's.
"""
