"""Deployments of the flows: each model's simulate deployment, the publish deployment and its triggers, submission, Kubernetes operator manifests, Docker engine scripts."""
