"""``build_services(settings)``: the single composition root for the CLI and the API.

Concurrency model (docs/design-notes.md, "The service"): one :class:`Runtime` per process
holds the engine, the models and the index; a :class:`Services` is one caller's view of it
(actor, roles, request id, clock). Within a process, threads share the runtime: the model
pipeline is used by one thread at a time, the index is read under a shared lock and
changed under an exclusive one. Across processes (several server workers, a CLI command
beside a server), each has its own index, kept in step through the records' change log
before every search; every hit is re-checked against the records in any case."""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, func, select, union
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
from faceledger.store.sealing import DataCipher, Keyring
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


class RWLock:
    """Many readers or one writer (writer-preferring, so a stream of searches cannot starve
    an erasure). The gallery's in-memory index is read by searches and changed by
    refresh, enrolment and erasure: a search never sees a half-applied change."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass
class Runtime:
    """What lives as long as the process and is shared by every call and thread: the
    settings, the database engine, the model pipeline, the gallery index, the calibration.
    Heavy parts load on first use, once (``_init``); the pipeline is used by one thread at a
    time (dlib and OpenCV's nets keep per-call state), the index behind ``gallery_lock``."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]  # reads: deferred BEGIN, never the write lock
    writes: sessionmaker[Session]  # writes: BEGIN IMMEDIATE (see store.db)
    embedder: EmbedderSpec
    read_only: bool = False
    _pipeline: FacePipeline | None = field(default=None, repr=False)
    _gallery: Gallery | None = field(default=None, repr=False)
    _calibration: Calibration | None = field(default=None, repr=False)
    _cipher: DataCipher | None = field(default=None, repr=False)
    _init: threading.RLock = field(default_factory=threading.RLock, repr=False)
    pipeline_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    gallery_lock: RWLock = field(default_factory=RWLock, repr=False)


@dataclass(frozen=True)
class Services:
    """What a use case needs for one call: the shared :class:`Runtime`, and who acts
    (``actor``, ``roles``), the request id and the clock. ``for_call`` gives another
    caller's view of the same runtime: each audit event names the real user."""

    runtime: Runtime
    actor: str
    clock: Clock
    roles: frozenset[str] = frozenset()
    request_id: str | None = None

    def for_call(self, actor: str, *, roles: frozenset[str] | set[str] = frozenset(),
                 request_id: str | None = None, clock: Clock | None = None) -> Services:
        return Services(self.runtime, actor, clock or self.clock, frozenset(roles),
                        request_id)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def engine(self) -> Engine:
        return self.runtime.engine

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.runtime.sessions

    @property
    def writes(self) -> sessionmaker[Session]:
        return self.runtime.writes

    @property
    def embedder(self) -> EmbedderSpec:
        return self.runtime.embedder

    @property
    def read_only(self) -> bool:
        return self.runtime.read_only

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
        """The shared pipeline; use it under ``using_pipeline`` when threads share it."""
        rt = self.runtime
        if rt._pipeline is None:
            with rt._init:
                if rt._pipeline is None:
                    pipeline = build_pipeline(pipeline_config(self.settings))
                    if pipeline.space != self.space:
                        raise errors.EmbeddingSpaceMismatch(
                            f"pipeline space {pipeline.space} != store space {self.space}")
                    rt._pipeline = pipeline
        return rt._pipeline

    @contextmanager
    def using_pipeline(self) -> Iterator[FacePipeline]:
        """The pipeline, held by this thread alone for the block."""
        pipeline = self.pipeline
        with self.runtime.pipeline_lock:
            yield pipeline

    @property
    def calibration(self) -> Calibration:
        rt = self.runtime
        if rt._calibration is None:
            with rt._init:
                if rt._calibration is None:
                    rt._calibration = load_calibration(self.space,
                                                       self.embedder.calibration_file)
        return rt._calibration

    def keyring(self) -> Keyring:
        env = self.settings.data_key
        return Keyring(self.settings.resolved_keys_dir, self.home,
                       env.get_secret_value() if env is not None else None)

    @property
    def cipher(self) -> DataCipher:
        """Seals and opens templates, crops, kept images and the index file (encryption
        at rest, ``store.sealing``). A writable store without a key gets one."""
        rt = self.runtime
        if rt._cipher is None:
            with rt._init:
                if rt._cipher is None:
                    rt._cipher = self.keyring().cipher(create=not self.read_only)
        return rt._cipher

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
                       self.sessions, self.cipher, log_keep=self.settings.change_log_keep)

    @property
    def gallery(self) -> Gallery:
        """The configured space's gallery, opened (loaded, caught up with the records).
        Read it under ``runtime.gallery_lock.read()``, change it under ``.write()``."""
        rt = self.runtime
        if rt._gallery is None:
            with rt._init:
                if rt._gallery is None:
                    gallery = self.new_gallery()
                    gallery.open()
                    rt._gallery = gallery
        return rt._gallery

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
        dim = len(self.cipher.open(raw or b"", "template")) // 4
        log.warning("store holds templates of %s, not the configured %s: opening its own "
                    "index for maintenance", space, self.space)
        gallery = Gallery(self.home, self.settings.index_backend, dim, space, self.sessions,
                          self.cipher, log_keep=self.settings.change_log_keep)
        gallery.open()
        return gallery

    def receipt_key(self) -> bytes:
        """The store's secret for keyed hashes in erasure receipts (created on first use,
        readable by the owner only). Without it a receipt's target hash cannot be tested
        against a dictionary of names; with it, an auditor can confirm which reference a
        receipt is for. Kept in the keys folder, apart from the store (an older store's
        copy inside the store folder is moved there on first use)."""
        keys = self.settings.resolved_keys_dir
        path = keys / "receipt.key"
        legacy = self.home / "receipt.key"
        if legacy.is_file() and not path.exists():
            keys.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.replace(legacy, path)
        keys.mkdir(mode=0o700, parents=True, exist_ok=True)
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
            # Two range seeks on the space index, empty in a one-space store. (`!=`, or
            # DISTINCT over an OR, walks the whole index one template at a time: ~28 s
            # cold at 10M.)
            others = session.scalars(union(
                select(Template.space).where(Template.space < self.space),
                select(Template.space).where(Template.space > self.space))).all()
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
    factories = session_factories(engine)
    runtime = Runtime(settings=settings, engine=engine, sessions=factories.read,
                      writes=factories.write, embedder=embedder_spec(settings.embedder),
                      read_only=read_only)
    svc = Services(runtime, settings.user or getpass.getuser(), clock or SystemClock())
    try:
        _ = svc.cipher  # a store whose data key is missing is refused here, clearly
    except BaseException:
        engine.dispose()
        raise
    return svc
