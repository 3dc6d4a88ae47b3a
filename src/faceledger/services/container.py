"""``build_services(settings)``: the single composition root for the CLI and the API."""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from faceledger import errors
from faceledger.clock import Clock, SystemClock
from faceledger.config import Settings
from faceledger.governance.calibration import Calibration, load_calibration
from faceledger.index.factory import BACKENDS
from faceledger.services.gallery import Gallery
from faceledger.store.db import (
    create_private_file,
    head_revision,
    make_engine,
    require_schema,
    session_factories,
    upgrade,
)
from faceledger.store.models import Template
from faceledger.vision.embedders import EmbedderSpec, embedder_spec
from faceledger.vision.imaging import ImageLimits
from faceledger.vision.pipeline import FacePipeline, PipelineConfig, build_pipeline
from faceledger.vision.quality import QualityRules

log = logging.getLogger(__name__)


def pipeline_config(settings: Settings, threads: int = 0) -> PipelineConfig:
    return PipelineConfig(
        detector=settings.detector,
        upsample=settings.upsample,
        embedder=settings.embedder,
        threads=threads,
        limits=ImageLimits(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            min_side=settings.min_image_side,
        ),
        rules=QualityRules(
            min_face_px=settings.min_face_px,
            min_sharpness=settings.min_sharpness,
            max_pose_asymmetry=settings.max_pose_asymmetry,
        ),
    )


@dataclass
class Services:
    """Everything a use case needs. Heavy parts (models, index) load on first use."""

    settings: Settings
    clock: Clock
    engine: Engine
    sessions: sessionmaker[Session]  # reads: deferred BEGIN, never the write lock
    writes: sessionmaker[Session]  # writes: BEGIN IMMEDIATE (see store.db)
    actor: str
    embedder: EmbedderSpec
    read_only: bool = False
    _pipeline: FacePipeline | None = field(default=None, repr=False)
    _gallery: Gallery | None = field(default=None, repr=False)
    _calibration: Calibration | None = field(default=None, repr=False)

    @property
    def home(self) -> Path:
        return self.settings.home

    @property
    def space(self) -> str:
        return self.embedder.space

    @property
    def dim(self) -> int:
        return self.embedder.dim

    @property
    def pipeline(self) -> FacePipeline:
        if self._pipeline is None:
            self._pipeline = build_pipeline(pipeline_config(self.settings))
            if self._pipeline.space != self.space:
                raise errors.EmbeddingSpaceMismatch(
                    f"pipeline space {self._pipeline.space} != store space {self.space}")
        return self._pipeline

    @property
    def calibration(self) -> Calibration:
        if self._calibration is None:
            self._calibration = load_calibration(self.space, self.embedder.calibration_file)
        return self._calibration

    def search_threshold(self, gallery_size: int) -> float:
        """The score a candidate needs, for the configured target FPIR at this size."""
        fixed = self.settings.search_threshold
        if fixed is not None:
            return fixed
        return self.calibration.threshold_for_fpir(self.settings.target_fpir, gallery_size)

    def verify_threshold(self) -> float:
        fixed = self.settings.verify_threshold
        if fixed is not None:
            return fixed
        return self.calibration.score_for_fmr(self.settings.target_fmr)

    def require_writable(self) -> None:
        if self.read_only:
            raise errors.StoreReadOnly(
                f"the store at {self.home} is read-only for this process; this command "
                "writes (every search, verify, enrolment and erasure is audited)")

    def new_gallery(self) -> Gallery:
        """A gallery object for the configured space, not yet opened."""
        self.require_writable()
        self.check_single_space()
        return Gallery(self.home, self.settings.index_backend, self.dim, self.space,
                       self.sessions)

    @property
    def gallery(self) -> Gallery:
        """The configured space's gallery, opened (loaded, caught up with the records)."""
        if self._gallery is None:
            gallery = self.new_gallery()
            gallery.open()
            self._gallery = gallery
        return self._gallery

    def store_gallery(self) -> Gallery:
        """The gallery of the space the store's templates are *in*: the configured one, or
        (after an upgrade or a change of FACELEDGER_EMBEDDER) the one its records hold.
        Erasure uses this, so erasing never depends on the embedder setting: a person can
        always be erased, and the index file rewritten without their vectors. The read is
        finished before any gallery is opened (opening writes the index file)."""
        self.require_writable()
        with self.sessions() as session:
            spaces = session.execute(
                select(Template.space, func.min(Template.id)).group_by(Template.space)).all()
            raw = None
            if len(spaces) == 1 and spaces[0][0] != self.space:
                raw = session.scalar(select(Template.vector).where(Template.id == spaces[0][1]))
        if not spaces or (len(spaces) == 1 and spaces[0][0] == self.space):
            return self.gallery
        if len(spaces) > 1:
            raise errors.EmbeddingSpaceMismatch(
                f"the store holds templates of several spaces {sorted(s for s, _ in spaces)}")
        space = spaces[0][0]
        dim = len(raw or b"") // 4
        log.warning("store holds templates of %s, not the configured %s: opening its own "
                    "index for maintenance", space, self.space)
        gallery = Gallery(self.home, self.settings.index_backend, dim, space, self.sessions)
        gallery.open()
        return gallery

    def receipt_key(self) -> bytes:
        """The store's secret for keyed hashes in erasure receipts (created on first use,
        readable by the owner only). Without it a receipt's target hash cannot be tested
        against a dictionary of names; with it, an auditor can confirm which reference a
        receipt is for."""
        path = self.home / "receipt.key"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_bytes()
            if len(key) < 32:
                raise errors.ConfigError(f"{path} is damaged (shorter than 32 bytes)") from None
            return key
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
            fh.flush()
            os.fsync(fh.fileno())
        return key

    def check_single_space(self) -> None:
        """Refuse to work on a store holding templates of another embedding space."""
        with self.sessions() as session:
            others = session.scalars(
                select(Template.space).where(Template.space != self.space).distinct()
            ).all()
        if others:
            raise errors.EmbeddingSpaceMismatch(
                f"the store holds templates of embedding space(s) {sorted(others)}; this "
                f"build embeds into {self.space}. Re-enrol, or use the matching version."
            )

    def close(self) -> None:
        self.engine.dispose()


# Files of a store that hold or describe biometric data: owner-only.
_PRIVATE_FILES = ("faceledger.sqlite3", "faceledger.sqlite3-wal", "faceledger.sqlite3-shm",
                  "index.faiss", "index.npz", "index.lock", "receipt.key")


def _secure_permissions(home: Path) -> None:
    """The store folder 0700, its files 0600 (an older store's are tightened, logged)."""
    mode = stat.S_IMODE(home.stat().st_mode)
    if mode & 0o077:
        log.warning("store folder %s was readable by others (%o): now 0700", home, mode)
        home.chmod(0o700)
    for name in _PRIVATE_FILES:
        f = home / name
        if f.is_file() and stat.S_IMODE(f.stat().st_mode) & 0o077:
            f.chmod(0o600)
    images = home / "images"
    if images.is_dir() and stat.S_IMODE(images.stat().st_mode) & 0o077:
        images.chmod(0o700)


def _check_home(home: Path) -> None:
    if home.exists() and not home.is_dir():
        raise errors.ConfigError(
            f"FACELEDGER_HOME {home} is a file, not a folder: point it at a folder "
            "(it is created by `faceledger init`)")


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def build_services(
    settings: Settings, clock: Clock | None = None, *, create: bool = False
) -> Services:
    """Open (or with ``create``, initialise) the store at ``settings.home``."""
    if settings.index_backend not in BACKENDS:
        raise errors.ConfigError(f"unknown index backend {settings.index_backend!r}")
    home = settings.home
    _check_home(home)
    db_file = home / "faceledger.sqlite3"
    sqlite = settings.database_url is None
    read_only = False
    if create:
        try:
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
            if sqlite:
                create_private_file(db_file)
        except OSError as exc:
            raise errors.StoreUnavailable(f"cannot create the store at {home}: "
                                          f"{exc.strerror or exc}") from exc
    elif sqlite and not db_file.exists():
        raise errors.StoreNotInitialised(
            f"no faceledger store at {home.resolve()}: run `faceledger init` first "
            "(or set FACELEDGER_HOME)"
        )
    if home.is_dir():
        if not os.access(home, os.R_OK | os.X_OK) or (
                sqlite and not os.access(db_file, os.R_OK)):
            raise errors.StoreUnavailable(
                f"permission denied: this user cannot read the store at {home}")
        read_only = not _writable(home) or (sqlite and not _writable(db_file))
        if not read_only:
            _secure_permissions(home)
    engine = make_engine(settings.resolved_database_url, read_only=read_only and sqlite)
    try:
        if create:
            upgrade(engine)
        else:
            revision = require_schema(engine)
            if revision != head_revision():
                if read_only:
                    raise errors.StoreReadOnly(
                        f"the store at {home} needs a schema upgrade ({revision} -> "
                        f"{head_revision()}) but is read-only for this process")
                log.warning("upgrading the store's schema from %s to %s", revision,
                            head_revision())
                upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    actor = settings.user or getpass.getuser()
    factories = session_factories(engine)
    return Services(settings=settings, clock=clock or SystemClock(), engine=engine,
                    sessions=factories.read, writes=factories.write, actor=actor,
                    embedder=embedder_spec(settings.embedder), read_only=read_only)
