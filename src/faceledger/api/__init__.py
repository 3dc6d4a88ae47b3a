"""The REST API: ``create_app`` in :mod:`faceledger.api.app`."""
