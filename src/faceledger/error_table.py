"""The one table that maps domain errors to CLI exit codes and HTTP problem statuses.

Looked up by walking the exception's MRO, so a subclass inherits its parent's row unless it
has its own. The HTTP column is used by the REST API (RFC 9457 problem details, with
``type`` = ``https://faceledger.dev/problems/<code>``); the CLI uses the exit code.
"""

from __future__ import annotations

from dataclasses import dataclass

from faceledger import errors as e


@dataclass(frozen=True, slots=True)
class ErrorMapping:
    exit_code: int
    http_status: int
    title: str


# Exit codes: 1 = unexpected; 2 = usage (click's own); 3.. = domain errors.
ERROR_TABLE: dict[type[e.FaceledgerError], ErrorMapping] = {
    e.FaceledgerError: ErrorMapping(1, 500, "Internal error"),
    e.ImageError: ErrorMapping(3, 422, "Image refused"),
    e.ImageTooLarge: ErrorMapping(3, 413, "Image too large"),
    e.UnsupportedImageFormat: ErrorMapping(3, 415, "Unsupported image format"),
    e.FaceError: ErrorMapping(4, 422, "Face refused"),
    e.EmbeddingSpaceMismatch: ErrorMapping(4, 409, "Embedding space mismatch"),
    e.ConfigError: ErrorMapping(5, 500, "Configuration error"),
    e.ModelIntegrityError: ErrorMapping(5, 500, "Model integrity check failed"),
    e.StoreNotInitialised: ErrorMapping(5, 503, "Store not initialised"),
    e.StoreAlreadyInitialised: ErrorMapping(6, 409, "Store already initialised"),
    e.StoreError: ErrorMapping(5, 503, "Store unavailable"),
    e.StoreBusy: ErrorMapping(11, 503, "Store busy"),
    e.NotFound: ErrorMapping(7, 404, "Not found"),
    e.Conflict: ErrorMapping(6, 409, "Conflict"),
    e.InvalidRequest: ErrorMapping(8, 400, "Invalid request"),
    e.PolicyError: ErrorMapping(9, 403, "Forbidden by policy"),
    e.AuditChainBroken: ErrorMapping(10, 500, "Audit chain broken"),
    e.Unauthenticated: ErrorMapping(13, 401, "Authentication required"),
    e.Forbidden: ErrorMapping(9, 403, "Forbidden for this role"),
    e.RateLimited: ErrorMapping(11, 429, "Too many requests"),
}


def mapping_for(error: e.FaceledgerError) -> ErrorMapping:
    """Return the row for ``error``: its own class's, or its nearest ancestor's."""
    for cls in type(error).__mro__:
        row = ERROR_TABLE.get(cls)
        if row is not None:
            return row
    return ERROR_TABLE[e.FaceledgerError]
