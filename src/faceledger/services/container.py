"""``build_services(settings)``: the single composition root for the CLI and the API."""

from __future__ import annotations

import getpass
import logging
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
from faceledger.store.db import make_engine, require_schema, session_factory, upgrade
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
    sessions: sessionmaker[Session]
    actor: str
    embedder: EmbedderSpec
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

    @property
    def gallery(self) -> Gallery:
        if self._gallery is None:
            self.check_single_space()
            gallery = Gallery(self.home, self.settings.index_backend, self.dim, self.space,
                              self.sessions)
            gallery.open()
            self._gallery = gallery
        return self._gallery

    def store_gallery(self) -> Gallery:
        """The gallery of the space the store's templates are *in*: the configured one, or
        (after an upgrade or a change of FACELEDGER_EMBEDDER) the one its records hold.
        Erasure uses this, so erasing never depends on the embedder setting: a person can
        always be erased, and the index file rewritten without their vectors."""
        with self.sessions() as session:
            spaces = session.execute(
                select(Template.space, func.min(Template.id)).group_by(Template.space)).all()
            if not spaces or (len(spaces) == 1 and spaces[0][0] == self.space):
                return self.gallery
            if len(spaces) > 1:
                raise errors.EmbeddingSpaceMismatch(
                    f"the store holds templates of several spaces {sorted(s for s, _ in spaces)}")
            space, some_id = spaces[0]
            raw = session.scalar(select(Template.vector).where(Template.id == some_id))
        dim = len(raw or b"") // 4
        log.warning("store holds templates of %s, not the configured %s: opening its own "
                    "index for maintenance", space, self.space)
        gallery = Gallery(self.home, self.settings.index_backend, dim, space, self.sessions)
        gallery.open()
        return gallery

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


def build_services(
    settings: Settings, clock: Clock | None = None, *, create: bool = False
) -> Services:
    """Open (or with ``create``, initialise) the store at ``settings.home``."""
    if settings.index_backend not in BACKENDS:
        raise errors.ConfigError(f"unknown index backend {settings.index_backend!r}")
    home = settings.home
    if create:
        home.mkdir(parents=True, exist_ok=True)
    elif settings.database_url is None and not (home / "faceledger.sqlite3").exists():
        raise errors.StoreNotInitialised(
            f"no faceledger store at {home.resolve()}: run `faceledger init` first "
            "(or set FACELEDGER_HOME)"
        )
    engine = make_engine(settings.resolved_database_url)
    if create:
        upgrade(engine)
    else:
        require_schema(engine)
    actor = settings.user or getpass.getuser()
    return Services(settings=settings, clock=clock or SystemClock(), engine=engine,
                    sessions=session_factory(engine), actor=actor,
                    embedder=embedder_spec(settings.embedder))
