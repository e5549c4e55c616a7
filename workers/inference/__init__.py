"""The inference worker's service: samples from trained GANs and predictions of trained
classifiers, for POST /v1/jobs/{id}/samples and /predict (services/api/inference.py). It runs
in a Celery worker started with TRAINYARD_WORKER_ROLE=inference on the "{QUEUE}-inference"
queue only: it never trains, and training never waits on it."""
