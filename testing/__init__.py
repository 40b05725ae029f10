"""Stand-ins for the parts tests cannot reach (web app, GitHub, Secret Manager, a Kubernetes
cluster) and helpers shared by tests and benchmarks. Never imported by the platform's own code."""
