"""The model registry: model configs read from YAML files (and kept in sync with the web app) into
`CS Model Config` blocks."""
