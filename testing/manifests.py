"""Strict validation of Kubernetes manifests against the OpenAPI schema.

Why here and not in infra/: `kubernetes_validate` is a test dependency
(the `[test]` extra); the platform renders manifests and never needs it.
Tests validate the operator's manifests and rendered Jobs with this.
"""

from __future__ import annotations

from collections.abc import Iterable

import kubernetes_validate
from prefect_cs.infra.kubernetes import KUBERNETES_VERSION, Manifest


def validate(manifests: Iterable[Manifest], version: str = KUBERNETES_VERSION) -> int:
    """Validate each manifest strictly (unknown fields are errors); the count validated."""
    count = 0
    for manifest in manifests:
        kubernetes_validate.validate(manifest, version, strict=True)
        count += 1
    return count
