"""Store administration as use cases: create a store, rebuild and check its index."""

from __future__ import annotations

from typing import Any

from faceledger import errors
from faceledger.config import Settings
from faceledger.services.container import Services, build_services


def init_store(settings: Settings) -> dict[str, Any]:
    """Create the embedded store at ``settings.home`` (refused if one is there)."""
    home = settings.home
    if home.exists() and not home.is_dir():
        raise errors.ConfigError(f"FACELEDGER_HOME {home} is a file, not a folder")
    if (home / "faceledger.sqlite3").exists():
        raise errors.StoreAlreadyInitialised(f"a store already exists at {home}")
    svc = build_services(settings, create=True)
    try:
        count = svc.gallery.index.count()
    finally:
        svc.close()
    return {"home": str(home.resolve()), "templates": count,
            "keys": str(settings.resolved_keys_dir)}


def rebuild_index(svc: Services) -> int:
    """Rebuild the index from the records alone (the old file is never read)."""
    with svc.runtime.gallery_lock.write():
        return svc.new_gallery().rebuild()


def check_index(svc: Services, repair: bool = False) -> dict[str, Any]:
    """Compare index and records by id and by every vector; optionally repair."""
    gallery = svc.gallery
    opened = gallery.last_reconcile
    with svc.runtime.gallery_lock.write():
        r = gallery.check(repair=repair)
    differ = bool(r.added or r.removed or r.replaced)
    return {"agree": not differ or repair, "missing": r.added, "extra": r.removed,
            "different_content": r.replaced, "repaired": repair and differ,
            "templates": gallery.index.count(),
            "on_open": {"rebuilt": opened.rebuilt, "reason": opened.reason,
                        "added": opened.added, "removed": opened.removed}}
