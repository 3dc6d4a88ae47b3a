"""Use cases (enrol, search, verify, erase, ...) shared by the CLI and the API."""
