"""Typed settings, read from ``FACELEDGER_*`` environment variables.

Built only at the edges (``cli.main``, later ``create_app``) and passed down; nothing reads
the environment anywhere else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from faceledger.vision.embedder_names import EmbedderName

DetectorName = Literal["hog", "cnn", "hog+cnn", "yunet"]
IndexBackendName = Literal["faiss-flat", "faiss-pq-refine", "exact"]
DecisionScoreName = Literal["auto", "raw"]


def _json_value(text: str, kind: str) -> Any:
    """A setting given as JSON, or a ValueError that says what is wrong with it."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not a valid JSON {kind}: {exc.msg}") from exc


def _jurisdiction_code(code: str) -> str:
    """An ISO 3166 code as settings take it (``gb`` -> ``GB``, ``US-IL``), or ValueError."""
    key = code.strip().upper()
    if not (2 <= len(key) <= 8 and key.replace("-", "").isalnum() and key.isascii()):
        raise ValueError(f"{code.strip()!r} is not an ISO 3166 code (e.g. GB, FR, US-IL)")
    return key


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACELEDGER_", extra="forbid")

    home: Path = Field(default=Path("faceledger-data"), description="Embedded store folder.")
    keys_dir: Path | None = Field(
        default=None,
        description="Folder of the store's keys (data encryption, audit signing): kept "
                    "apart from the store so that a copy of the store folder or its backup "
                    "reveals nothing. Default: `<home>.keys` beside `home`.")
    data_key: SecretStr | None = Field(
        default=None,
        description="The data key (32 bytes, base64) sealing new data, instead of the "
                    "keys folder's primary key; older keys are still read from the folder.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in `home`."
    )
    index_backend: IndexBackendName = Field(
        default="faiss-flat",
        description="faiss-flat (exact search, the default), faiss-pq-refine (PQ fast-scan "
                    "candidates re-ranked exactly: for galleries of ~1M templates and more, "
                    "served by a long-running server; docs/performance.md), or exact (NumPy, "
                    "the reference).")
    change_log_keep: int = Field(
        default=10_000, ge=1,
        description="Positions of the gallery's change log kept behind what the index "
                    "files reflect; a save deletes older rows once the log spans twice "
                    "this. A process further behind reloads from the index files.")

    embedder: EmbedderName = Field(
        default="dlib+sface",
        description="Face model(s): dlib+sface (fused, default) or dlib (dlib alone). A "
                    "store's templates are all of one; changing it needs a re-enrolment.")
    detector: DetectorName = Field(
        default="yunet",
        description="yunet (the default: OpenCV Zoo's YuNet; frontal, profile and small "
                    "faces, ~4 ms for an LFW image, ~0.5 s for a 12 Mpixel photo), hog, cnn, "
                    "or hog+cnn (dlib's HOG, and its CNN only when HOG finds no face, on at "
                    "most 0.5 Mpixel: ~1 s; the default before 2026-12).")
    upsample: int = Field(default=1, ge=0, le=3, description="Detector upsampling passes.")
    max_image_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    max_upload_bytes: int = Field(
        default=200 * 1024 * 1024, gt=0,
        description="API: the largest request body (an enrolment of several images).")
    min_image_side: int = Field(default=32, gt=0)
    min_face_px: int = Field(default=40, gt=0, description="Enrolment: smallest face side.")
    min_sharpness: float = Field(default=5.0, ge=0, description="Enrolment: blur floor.")
    max_pose_asymmetry: float = Field(default=0.8, gt=0, le=1)

    # Similarity = cosine of L2-normalised descriptors. Thresholds come from the shipped
    # calibration (score -> false match rate, governance/calibrations/): search keeps the
    # chance that a stranger gets any candidate at `target_fpir` *for the gallery's current
    # size*; verify accepts at `target_fmr`. A fixed score threshold overrides either.
    target_fpir: float = Field(default=0.01, gt=0, lt=1)
    target_fmr: float = Field(default=0.001, gt=0, lt=1)
    search_threshold: float | None = Field(default=None, ge=-1, le=1)
    # auto: the decision score the embedder's calibration chose on development data. For
    # `dlib` that is `znorm` (the best score standardised against the probe's 100
    # runners-up) from 300 templates up; for `dlib+sface` it is the calibrated score
    # itself. `raw` forces the calibrated score.
    decision_score: DecisionScoreName = "auto"
    verify_threshold: float | None = Field(default=None, ge=-1, le=1)
    top_k: int = Field(default=10, ge=1, le=1000)

    review_confirmations: int = Field(
        default=2, ge=1, le=2,
        description="Confirmations by different reviewers that make a candidate a confirmed "
                    "identification (EU AI Act Art. 14(5): two).")
    auth_failures_per_minute: int = Field(
        default=10, ge=1, description="API: failed authentications a client address may make "
                                      "in a minute before it gets 429 (each is audited).")
    probe_crop_days: int = Field(
        default=30, ge=0, description="Longest a searched face's crop is kept while its "
                                      "candidates await review (0: never kept).")
    web_idle_minutes: int = Field(default=30, ge=1, le=24 * 60,
                                  description="Web page: idle time before a login expires.")
    # Audit integrity (docs/audit-verification.md): signed Merkle tree heads ("checkpoints").
    audit_signing_key: Path | None = Field(
        default=None,
        description="The Ed25519 key (PEM, PKCS#8) that signs audit checkpoints; default "
                    "`<keys_dir>/audit-signing.pem`, created (0600) on first use.")
    audit_checkpoint_dir: Path | None = Field(
        default=None,
        description="Where `faceledger serve` and pruning write signed checkpoints; "
                    "default `<keys_dir>/checkpoints`.")
    audit_checkpoint_minutes: float = Field(
        default=60, ge=0, description="faceledger serve: minutes between signed audit "
                                      "checkpoints (0: none).")
    audit_retention_days: int = Field(
        default=183, ge=183, description="Audit events are kept at least this long, then "
                                         "pruned after a checkpoint (EU AI Act Art. 19: "
                                         "six months at least).")
    keep_images: bool = Field(default=False, description="Keep original images (off).")
    workers: int = Field(default=0, ge=0, description="Ingest processes; 0 = one per core.")
    # A JSON list ('["FR", "IT"]') or a comma-separated list ("FR,IT"): both are accepted.
    excluded_jurisdictions: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # The longest retention a source of a jurisdiction may have, in days: JSON
    # ('{"US-IL": 1095}') or "US-IL=1095,FR=365". A code without a region ("US") covers
    # its regions too. New sources over it are refused; the retention sweep caps what is
    # already held.
    jurisdiction_retention_days: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict)
    retention_sweep_minutes: float = Field(
        default=60, ge=0, description="faceledger serve: minutes between retention sweeps "
                                      "(0: none; run `faceledger retention sweep` instead).")
    user: str | None = Field(default=None, description="Acting user for the audit log.")
    url: str | None = Field(
        default=None, description="CLI: a running server's URL; search, verify, enroll, "
                                  "source list, subjects list, erase and audit verify then "
                                  "go through it, with the API key's user and roles.")
    api_key: SecretStr | None = Field(default=None, description="CLI: the key for `url`.")

    @field_validator("home", mode="before")
    @classmethod
    def _home_not_empty(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            raise ValueError("is empty: set it to the store's folder, or unset it for "
                             "./faceledger-data")
        return v

    @field_validator("excluded_jurisdictions", mode="before")
    @classmethod
    def _parse_jurisdictions(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                return _json_value(text, "list")
            return [part for part in text.split(",") if part.strip()]
        return v

    @field_validator("jurisdiction_retention_days", mode="before")
    @classmethod
    def _parse_ceilings(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("{"):
                return _json_value(text, "object")
            out: dict[str, Any] = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                code, sep, days = part.partition("=")
                if not sep:
                    raise ValueError(f"{part!r}: write CODE=DAYS (e.g. US-IL=1095)")
                out[code.strip()] = days.strip()
            return out
        return v

    @field_validator("jurisdiction_retention_days")
    @classmethod
    def _check_ceilings(cls, v: dict[str, int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for code, days in v.items():
            key = _jurisdiction_code(code)
            if days < 1:
                raise ValueError(f"{code}: the ceiling must be at least 1 day")
            out[key] = days
        return out

    @field_validator("excluded_jurisdictions")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        return [_jurisdiction_code(j) for j in v if j.strip()]

    @property
    def resolved_keys_dir(self) -> Path:
        if self.keys_dir is not None:
            return self.keys_dir
        home = self.home.resolve()
        return home.parent / f"{home.name}.keys"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'faceledger.sqlite3').resolve()}"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (and ``overrides`` that are not None), or a typed
    :class:`errors.ConfigError` naming the variable: never a traceback."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from faceledger import errors

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise errors.ConfigError(f"FACELEDGER_{loc.upper()}: {msg}") from None
    except SettingsError as exc:  # a value the settings source could not even parse
        raise errors.ConfigError(str(exc)) from None
