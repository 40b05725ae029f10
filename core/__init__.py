"""Shared by every room: the one settings tree, the exceptions, names, the retrying HTTP helper, the
GitHub client."""
