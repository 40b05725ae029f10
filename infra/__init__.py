"""What an operator sets up for the platform to run on: the Kubernetes manifests to apply, the
Docker engine, registry and base-image scripts."""
