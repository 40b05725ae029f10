"""Prefect deployments of the flows: each model's simulate deployment, the publish deployment and
its triggers, submission, a model's runs still queued."""
