"""The domain error tree.

Every error has a stable ``code`` (used in JSON output, audit events and, later, RFC 9457
problem types). How a code maps to a CLI exit code or an HTTP status lives in one table,
:mod:`faceledger.error_table`; nothing here knows about HTTP.
"""

from __future__ import annotations


class FaceledgerError(Exception):
    """Base of every error faceledger raises on purpose."""

    code = "faceledger_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- input images -------------------------------------------------------------------------
class ImageError(FaceledgerError):
    """An input image was refused before any face work."""

    code = "image_invalid"


class EmptyImage(ImageError):
    code = "image_empty"


class UnreadableImage(ImageError):
    """Not an image at all, or a format Pillow cannot identify."""

    code = "image_unreadable"


class TruncatedImage(ImageError):
    code = "image_truncated"


class UnsupportedImageFormat(ImageError):
    code = "image_format_unsupported"


class MultiFrameImage(ImageError):
    """Animated GIF/WEBP or multi-page TIFF: which frame to use would be a guess."""

    code = "image_multi_frame"


class ImageTooLarge(ImageError):
    """Over the byte cap or the pixel cap (decompression bombs land here)."""

    code = "image_too_large"


class ImageTooSmall(ImageError):
    code = "image_too_small"


# --- faces --------------------------------------------------------------------------------
class FaceError(FaceledgerError):
    code = "face_error"


class NoFaceFound(FaceError):
    code = "no_face"


class FaceRefused(FaceError):
    """A face was found but cannot be used (reason: several, too_small, blurred, pose)."""

    code = "face_refused"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class EmbeddingSpaceMismatch(FaceError):
    """Templates from another model/alignment may not be compared with this one."""

    code = "embedding_space_mismatch"


# --- models and configuration ---------------------------------------------------------------
class ConfigError(FaceledgerError):
    code = "config_invalid"


class DataKeyMissing(ConfigError):
    """The store's data is encrypted under a key this process does not have."""

    code = "data_key_missing"


class ModelIntegrityError(FaceledgerError):
    """Model weights are missing or their SHA-256 does not match the pinned value."""

    code = "model_integrity"


class StoreNotInitialised(FaceledgerError):
    code = "store_not_initialised"


class StoreAlreadyInitialised(FaceledgerError):
    code = "store_exists"


class StoreError(FaceledgerError):
    """The store cannot be used as asked: read-only, unreachable, damaged, busy."""

    code = "store_error"


class StoreReadOnly(StoreError):
    code = "store_read_only"


class StoreUnavailable(StoreError):
    code = "store_unavailable"


class StoreCorrupt(StoreError):
    """Stored data failed its integrity check (a sealed blob altered or damaged)."""

    code = "store_corrupt"


class StoreBusy(StoreError):
    """Another process held the write lock for longer than the busy timeout."""

    code = "store_busy"


# --- gallery records -----------------------------------------------------------------------
class NotFound(FaceledgerError):
    code = "not_found"


class SourceNotFound(NotFound):
    code = "source_not_found"


class SubjectNotFound(NotFound):
    code = "subject_not_found"


class Conflict(FaceledgerError):
    code = "conflict"


class SourceExists(Conflict):
    code = "source_exists"


class InvalidRequest(FaceledgerError):
    """A request that breaks a rule of the domain (bad field, bad manifest row...)."""

    code = "invalid_request"


class ManifestError(InvalidRequest):
    code = "manifest_invalid"


class InvalidReference(InvalidRequest):
    """A subject reference (or display name) outside the allowed form (see ``refs``)."""

    code = "subject_ref_invalid"


class InvalidFile(InvalidRequest):
    """A path that is not a regular readable file (a FIFO, a device, a folder...)."""

    code = "file_invalid"


# --- governance ----------------------------------------------------------------------------
class PolicyError(FaceledgerError):
    """The action is forbidden by the gallery's governance rules."""

    code = "policy_denied"


class PurposeNotAllowed(PolicyError):
    code = "purpose_not_allowed"


class JurisdictionExcluded(PolicyError):
    code = "jurisdiction_excluded"


class RetentionTooLong(PolicyError):
    """A retention period over the operator's ceiling for the jurisdiction."""

    code = "retention_too_long"


class SourceRetired(PolicyError):
    code = "source_retired"


class PreviouslyErased(PolicyError):
    """The image was erased before; re-enrolling it needs an explicit decision."""

    code = "previously_erased"


class Unauthenticated(FaceledgerError):
    """No credentials, or credentials that name no active user or key."""

    code = "unauthenticated"


class Forbidden(PolicyError):
    """Authenticated, but the user's roles do not allow this action."""

    code = "forbidden"


class RateLimited(FaceledgerError):
    code = "rate_limited"


class UserExists(Conflict):
    code = "user_exists"


class UserNotFound(NotFound):
    code = "user_not_found"


class SearchNotFound(NotFound):
    code = "search_not_found"


class CandidateNotFound(NotFound):
    code = "candidate_not_found"


class ReviewConflict(Conflict):
    """Already decided by this reviewer, or the candidate is already closed."""

    code = "review_conflict"


class OwnSearch(PolicyError):
    """The investigator who ran a search can never review its candidates."""

    code = "own_search"


class AuditChainBroken(FaceledgerError):
    code = "audit_chain_broken"

    def __init__(self, message: str, event_id: int) -> None:
        super().__init__(message)
        self.event_id = event_id


class AuditCheckpointMismatch(AuditChainBroken):
    """The log does not match a signed checkpoint: events cut off or rewritten up to
    it, or a checkpoint whose signature does not verify (exit 10, like a broken chain)."""

    code = "audit_checkpoint_mismatch"

    def __init__(self, message: str, event_id: int = 0) -> None:
        super().__init__(message, event_id)
