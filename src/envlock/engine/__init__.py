"""The container engine behind a small Protocol (Docker adapter) and the launcher."""
