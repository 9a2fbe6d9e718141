"""The backend's only way out: HTTP to the Label Studio it was started with, with its API key.

    ls = LabelStudio("http://127.0.0.1:8080", api_key)
    path = ls.download(task["data"]["image"], task["id"], folder)     # FetchError: one line
    tasks = ls.export(project_id)                                      # the project's annotated tasks

Image URLs come from tasks, i.e. from whoever can create tasks, so they are resolved here and never
fetched elsewhere:

* ``/data/upload/...`` and ``/data/local-files/?d=...`` (and any other path) are joined to the
  Label Studio URL;
* an absolute ``http(s)`` URL is fetched only if it points at that same Label Studio (scheme, host, port);
* a cloud-storage URI (``s3://``, ``gs://``, ``azure-blob://``, ...) goes through Label Studio's own
  ``/tasks/<id>/resolve/?fileuri=...`` (the project's storage must proxy, not redirect elsewhere);
* anything else is refused. Redirects are followed only within Label Studio; responses are capped
  (`MAX_IMAGE_BYTES`, `MAX_EXPORT_BYTES`) and time out (`TIMEOUT_S`).

The key is a legacy token (``Authorization: Token ...``) or a personal access token (a JWT refresh
token, exchanged at ``/api/token/refresh/`` for a short-lived access token, renewed on 401).
"""
from __future__ import annotations

import base64
import os
import threading
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from app.errors import AppError
from condinst.untrusted import InputError, parse_json
from training.entry_checks import describe, is_id

TIMEOUT_S = 30.0
MAX_IMAGE_BYTES = 200 * 2**20
MAX_EXPORT_BYTES = 1 * 2**30
MAX_REDIRECTS = 3
MAX_TOKEN_BYTES = 64 * 1024
STORAGE_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi", "gcs")


class FetchError(AppError):
    """Something could not be fetched from Label Studio; the message says what and why."""


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def check_base_url(url: str) -> str:
    """A Label Studio base URL (http or https with a host), without a trailing slash; FetchError if not."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"--label-studio-url {url!r}: give Label Studio's address, like http://127.0.0.1:8080")
    if parts.query or parts.fragment or parts.username:
        raise FetchError(f"--label-studio-url {url!r}: no query, fragment or user in the address")
    return url.rstrip("/")


class LabelStudio:
    """A small client of one Label Studio (see the module docstring)."""

    def __init__(self, url: str, api_key: str, timeout: float = TIMEOUT_S, transport: httpx.BaseTransport | None = None):
        self.url = check_base_url(url)
        self.api_key = (api_key or "").strip()
        self._access: str | None = None
        self._lock = threading.Lock()
        self.http = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, transport=transport)

    def close(self) -> None:
        self.http.close()

    # ---- authentication -----------------------------------------------------------------------
    @property
    def personal_token(self) -> bool:
        """Whether the key is a personal access token (a JWT) rather than a legacy token."""
        return self.api_key.count(".") == 2

    def _headers(self, renew: bool = False) -> dict[str, str]:
        if not self.api_key:
            raise FetchError("No Label Studio API key: set LABEL_STUDIO_API_KEY (Account & Settings in Label Studio).")
        if not self.personal_token:
            return {"Authorization": f"Token {self.api_key}"}
        with self._lock:
            if self._access is None or renew:
                response = self._send("POST", self.url + "/api/token/refresh/", json={"refresh": self.api_key})
                if response.status_code != 200:
                    raise FetchError(f"Label Studio refused the personal access token (HTTP {response.status_code}).")
                self._access = _access_token(response.content)
            return {"Authorization": f"Bearer {self._access}"}

    # ---- requests -----------------------------------------------------------------------------
    def _send(self, method: str, url: str, **kwargs) -> httpx.Response:
        try:
            return self.http.request(method, url, **kwargs)
        except httpx.TimeoutException:
            raise FetchError(f"Label Studio did not answer in time: {method} {url}") from None
        except httpx.HTTPError as exc:
            raise FetchError(f"Cannot reach Label Studio at {self.url}: {exc}") from None

    def inside(self, url: str) -> bool:
        """Whether an absolute URL points at this Label Studio."""
        base = urlsplit(self.url)
        return _origin(url) == _origin(self.url) and urlsplit(url).path.startswith(base.path or "/")

    def resolve(self, url: str, task_id: int | None = None) -> str:
        """The Label Studio URL of a task's image reference; FetchError if it lies outside Label Studio."""
        if not isinstance(url, str) or not url.strip():
            raise FetchError("The task has no image URL.")
        url = url.strip()
        scheme = urlsplit(url).scheme.lower()
        if scheme in STORAGE_SCHEMES:
            if not is_id(task_id):
                raise FetchError(f"{url[:200]}: a cloud-storage image needs its task's integer id to be resolved by "
                                 f"Label Studio, got {describe(task_id)}")
            token = base64.urlsafe_b64encode(url.encode()).decode()
            return f"{self.url}/tasks/{int(task_id)}/resolve/?fileuri={token}"
        if url.startswith("/") and not url.startswith("//"):
            return self.url + url
        if scheme in ("http", "https") and self.inside(url):
            return url
        raise FetchError(f"{url[:200]}: not served by Label Studio at {self.url}; import the image into Label "
                         "Studio (upload, local files or cloud storage) - the backend fetches nothing else.")

    def get(self, url: str, limit: int) -> bytes:
        """GET a Label Studio URL (redirects only within it), at most `limit` bytes; FetchError otherwise."""
        headers = self._headers()
        for attempt in range(MAX_REDIRECTS + 2):
            if not self.inside(url):
                raise FetchError(f"{url[:200]}: redirected outside Label Studio at {self.url}; not followed")
            with self.http.stream("GET", url, headers=headers) as response:
                if response.status_code == 401 and self.personal_token and attempt == 0:
                    headers = self._headers(renew=True)
                    continue
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code != 200:
                    raise FetchError(f"Label Studio answered HTTP {response.status_code} for {url[:200]}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise FetchError(f"{url[:200]}: {int(declared)} bytes, more than the {limit} allowed")
                chunks, size = [], 0
                try:
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > limit:
                            raise FetchError(f"{url[:200]}: more than the {limit} bytes allowed")
                        chunks.append(chunk)
                except httpx.TimeoutException:
                    raise FetchError(f"Label Studio did not send {url[:200]} in time") from None
                except httpx.HTTPError as exc:
                    raise FetchError(f"Reading {url[:200]} from Label Studio failed: {exc}") from None
                return b"".join(chunks)
        raise FetchError(f"{url[:200]}: too many redirects")

    def download(self, image_url: str, task_id: int | None, folder: Path, name: str) -> Path:
        """Fetch a task's image into folder/<name><suffix> (written atomically); its path."""
        url = self.resolve(image_url, task_id)
        data = self.get(url, MAX_IMAGE_BYTES)
        suffix = Path(urlsplit(image_url).path).suffix.lower()
        suffix = suffix if suffix in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp") else ".img"
        target = Path(folder) / f"{name}{suffix}"
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(data)
        os.replace(partial, target)
        return target

    def export(self, project_id: int) -> list[dict]:
        """The project's tasks with their annotations (Label Studio's JSON export)."""
        url = f"{self.url}/api/projects/{int(project_id)}/export?exportType=JSON"
        data = self.get(url, MAX_EXPORT_BYTES)
        try:
            tasks = parse_json(data, f"Label Studio's export of project {project_id}")
        except InputError as exc:  # not JSON, or nested deeper than MAX_JSON_DEPTH
            raise FetchError(str(exc)) from None
        if not isinstance(tasks, list):
            raise FetchError(f"Label Studio's export of project {project_id} is not a list of tasks")
        return [task for task in tasks if isinstance(task, dict)]


def _access_token(body: bytes) -> str:
    """The access token of Label Studio's /api/token/refresh/ answer; FetchError if it has none."""
    if len(body) > MAX_TOKEN_BYTES:
        raise FetchError(f"Label Studio's answer to the personal access token is over {MAX_TOKEN_BYTES} bytes.")
    try:
        answer = parse_json(body, "Label Studio's answer to the personal access token")
    except InputError as exc:
        raise FetchError(str(exc)) from None
    access = answer.get("access") if isinstance(answer, dict) else None
    if not isinstance(access, str) or not access or not access.isascii() or not access.isprintable():
        raise FetchError("Label Studio's answer to the personal access token holds no access token.")
    return access
