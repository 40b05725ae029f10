"""The `prefect-cs` command line: one module per command group, one console and one error helper
(`_utilities`)."""
