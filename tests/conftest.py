"""Shared fixtures. Real images come from ../shared/data (or $FACELEDGER_TEST_DATA)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from faceledger.clock import FixedClock
from faceledger.config import Settings
from faceledger.services.container import Services, build_services
from faceledger.services.sources import SourceSpec, add_source
from faceledger.vision.pipeline import FacePipeline, PipelineConfig, build_pipeline

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    configured = os.environ.get("FACELEDGER_TEST_DATA")
    path = Path(configured) if configured else REPO.parent / "shared" / "data"
    if not (path / "lfw").is_dir():
        raise RuntimeError(
            f"test images not found at {path}: put ../shared/data beside the checkout "
            "or set FACELEDGER_TEST_DATA")
    return path


@pytest.fixture(scope="session")
def data() -> Path:
    return _data_dir()


@pytest.fixture(scope="session")
def lfw(data: Path) -> Path:
    return data / "lfw"


@pytest.fixture(scope="session")
def pipeline() -> FacePipeline:
    """The default pipeline (embedder dlib+sface)."""
    return build_pipeline(PipelineConfig())


@pytest.fixture(scope="session")
def dlib_pipeline() -> FacePipeline:
    """dlib alone: what the product falls back to without the second model."""
    return build_pipeline(PipelineConfig(embedder="dlib"))


@pytest.fixture(params=["dlib+sface", "dlib"])
def any_pipeline(request: pytest.FixtureRequest, pipeline: FacePipeline,
                 dlib_pipeline: FacePipeline) -> FacePipeline:
    return pipeline if request.param == "dlib+sface" else dlib_pipeline


T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


def make_services(home: Path, **overrides: object) -> Services:
    values: dict[str, object] = {"workers": 1, "user": "tester", **overrides}
    settings = Settings(home=home, **values)  # type: ignore[arg-type]
    create = not (home / "faceledger.sqlite3").exists()
    return build_services(settings, FixedClock(T0), create=create)


def custody_source(svc: Services, name: str = "custody", jurisdiction: str = "GB") -> None:
    add_source(svc, SourceSpec(
        name=name, lawful_basis="law-enforcement-statute", basis_ref="PACE 1984 s.64A",
        jurisdiction=jurisdiction, retention_days=365, purposes=("investigation",),
        supplier="Records Unit"))


def lfw_people(lfw: Path, n: int, min_images: int = 2, skip: int = 0) -> list[str]:
    """The first ``n`` LFW names (alphabetical, after ``skip``) with enough images."""
    names = []
    for d in sorted(lfw.iterdir()):
        if d.is_dir() and len(list(d.glob("*.jpg"))) >= min_images:
            names.append(d.name)
    return names[skip:skip + n]


def gallery_folder(lfw: Path, names: list[str], target: Path, image_no: int = 1) -> Path:
    """A <subject-ref>/<image> folder of symlinks into the shared data (nothing copied)."""
    for name in names:
        (target / name).mkdir(parents=True, exist_ok=True)
        src = lfw / name / f"{name}_{image_no:04d}.jpg"
        (target / name / src.name).symlink_to(src)
    return target


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Services]:
    s = make_services(tmp_path / "home")
    custody_source(s)
    yield s
    s.close()
