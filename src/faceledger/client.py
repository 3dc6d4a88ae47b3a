"""The CLI as a client of a running server (``FACELEDGER_URL`` + ``FACELEDGER_API_KEY``).

The same commands, the same output, the same exit codes: a problem+json answer is turned
back into the domain error of its ``code`` (so the one error table gives the exit code),
and the server's roles apply. A search then takes the warm server's time, not a cold
start's model loading.
"""

from __future__ import annotations

from typing import Any

import httpx

from faceledger import errors


def _error_classes() -> dict[str, type[errors.FaceledgerError]]:
    found: dict[str, type[errors.FaceledgerError]] = {}
    todo: list[type[errors.FaceledgerError]] = [errors.FaceledgerError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    return found


def remote_error(code: str, message: str) -> errors.FaceledgerError:
    """The domain error a server's problem ``code`` stands for (its own message)."""
    cls = _error_classes().get(code)
    if cls is None:
        err = errors.FaceledgerError(message)
        err.code = code
        return err
    err = cls.__new__(cls)
    errors.FaceledgerError.__init__(err, message)
    return err


class Client:
    def __init__(self, url: str, api_key: str, timeout: float = 300) -> None:
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout,
                                  headers={"Authorization": f"Bearer {api_key}"})

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise errors.StoreUnavailable(f"cannot reach the server at "
                                          f"{self._http.base_url}: {exc}") from exc
        if r.headers.get("content-type", "").startswith("application/problem+json"):
            body = r.json()
            raise remote_error(str(body.get("code", "internal")), str(body.get("detail", "")))
        if r.status_code >= 400:
            raise errors.FaceledgerError(f"server answered {r.status_code}: {r.text[:200]}")
        return r.json()

    def search(self, data: bytes, *, purpose: str, case: str, top_k: int | None,
               face: int | None) -> dict[str, Any]:
        form: dict[str, Any] = {"purpose": purpose, "case": case}
        if top_k is not None:
            form["top_k"] = str(top_k)
        if face is not None:
            form["face"] = str(face)
        result: dict[str, Any] = self._call("POST", "/v1/searches", data=form,
                                            files={"image": ("probe", data)})
        return result

    def verify(self, a: bytes, b: bytes, *, purpose: str | None, case: str | None
               ) -> dict[str, Any]:
        form = {k: v for k, v in (("purpose", purpose), ("case", case)) if v}
        result: dict[str, Any] = self._call(
            "POST", "/v1/verifications", data=form,
            files={"image_a": ("a", a), "image_b": ("b", b)})
        return result

    def sources(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/sources")
        return result

    def subjects(self, source: str | None) -> list[dict[str, Any]]:
        params = {"source": source} if source else None
        result: list[dict[str, Any]] = self._call("GET", "/v1/subjects", params=params)
        return result

    def enrol(self, source: str, uploads: list[tuple[str, str, bytes]]) -> dict[str, Any]:
        """``uploads``: (label, subject_ref, bytes); the server's per-file report."""
        result: dict[str, Any] = self._call(
            "POST", f"/v1/sources/{source}/images",
            data={"subject_ref": [ref for _, ref, _ in uploads]},
            files=[("image", (label, data)) for label, _, data in uploads])
        return result

    def erase_subject(self, subject_id: int, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/v1/subjects/{subject_id}",
                                            params={"reason": reason})
        return result

    def audit_verify(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/audit/verify")
        return result
