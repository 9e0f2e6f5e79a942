"""``Connection``: where a :class:`~bge_rerank_plugins.remote.RemoteScorer` sends its requests.

It holds the sync and async httpx clients (one async client per event loop: a client's
connections belong to its loop), learns what it does not know about the server with one probe
(the dialect for ``"auto"``, the request size from TEI's ``/info``), and sends each request with
bounded retries (:mod:`.http`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from typing import Any

import httpx

from ..runtime.deadline import DeadlineExceeded
from .dialects import ENDPOINTS
from .http import RemoteRerankError, asend, remaining, send

__all__ = ["DEFAULT_MAX_BATCH", "Connection"]

logger = logging.getLogger(__name__)

#: Texts per request when neither ``max_batch=`` nor the server's ``/info`` says.
DEFAULT_MAX_BATCH = 32


class Connection:
    """HTTP clients, the probe and retries for one server (see ``RemoteScorer`` for the args)."""

    def __init__(
        self,
        base_url: str,
        *,
        endpoint: str | None,
        dialect: str | None,
        max_batch: int | None,
        headers: dict[str, str],
        timeout: float,
        max_retries: int,
        transport: httpx.BaseTransport | None,
        async_transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self.base_url = base_url
        self.endpoint = endpoint
        self.dialect = dialect
        self.max_batch = max_batch
        self.headers = headers
        self.timeout = timeout
        self.max_retries = max_retries
        self.transport = transport
        self.async_transport = async_transport
        self.resolved = dialect is not None and max_batch is not None
        self._client: httpx.Client | None = None
        self._aclients: weakref.WeakKeyDictionary[Any, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The scoring endpoint's full URL."""
        return self.base_url + (self.endpoint or ENDPOINTS[self.dialect or "tei"])

    # ------------------------------------------------------------ clients
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                headers=self.headers, timeout=self.timeout, transport=self.transport
            )
        return self._client

    def aclient(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = httpx.AsyncClient(
                headers=self.headers, timeout=self.timeout, transport=self.async_transport
            )
            self._aclients[loop] = client
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        client = self._aclients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    # ------------------------------------------------------------ requests
    def post(self, body: Any) -> Any:
        """The JSON answer to one scoring request."""
        self.resolve()
        response = send(
            self.client(),
            "POST",
            self.url,
            json=body,
            max_retries=self.max_retries,
            timeout=self.timeout,
        )
        return response.json()

    async def apost(self, body: Any) -> Any:
        """:meth:`post`, awaited."""
        await self.aresolve()
        response = await asend(
            self.aclient(),
            "POST",
            self.url,
            json=body,
            max_retries=self.max_retries,
            timeout=self.timeout,
        )
        return response.json()

    # ------------------------------------------------------------ the probe
    def _settle(self, info: Any, has_models: bool) -> None:
        is_tei = isinstance(info, dict) and "model_type" in info
        if self.dialect is None:
            self.dialect = "tei" if is_tei else ("vllm" if has_models else "cohere")
        if self.max_batch is None:
            size = info.get("max_client_batch_size") if is_tei else None
            ok = isinstance(size, int) and not isinstance(size, bool) and size > 0
            self.max_batch = size if ok else DEFAULT_MAX_BATCH
        self.resolved = True
        logger.info(
            "RemoteScorer %s: dialect %s, %d texts per request",
            self.base_url,
            self.dialect,
            self.max_batch,
        )

    @staticmethod
    def _absent(error: RemoteRerankError) -> None:
        """A probe that found nothing is an answer; unreachable or a wrong key is an error."""
        if error.status is None or error.status in (401, 403):
            raise error

    def _get(self, path: str) -> httpx.Response | None:
        try:
            return send(
                self.client(),
                "GET",
                self.base_url + path,
                max_retries=self.max_retries,
                timeout=self.timeout,
            )
        except RemoteRerankError as error:
            self._absent(error)
            return None

    async def _aget(self, path: str) -> httpx.Response | None:
        try:
            return await asend(
                self.aclient(),
                "GET",
                self.base_url + path,
                max_retries=self.max_retries,
                timeout=self.timeout,
            )
        except RemoteRerankError as error:
            self._absent(error)
            return None

    @staticmethod
    def _json(response: httpx.Response | None) -> Any:
        if response is None:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    def _needs_models(self, info: Any) -> bool:
        return self.dialect is None and not (isinstance(info, dict) and "model_type" in info)

    def resolve(self) -> None:
        """Probe the server once, if the dialect or the request size is still unknown."""
        if self.resolved:
            return
        # Inside rank(timeout=...), waiting on another thread's probe keeps the deadline too.
        left = remaining()
        if not self._lock.acquire(timeout=-1 if left is None else max(0.0, left)):
            raise DeadlineExceeded(f"the deadline passed while {self.base_url} was probed")
        try:
            if self.resolved:
                return
            info = self._json(self._get("/info"))
            has_models = self._needs_models(info) and self._get("/v1/models") is not None
            self._settle(info, has_models)
        finally:
            self._lock.release()

    async def aresolve(self) -> None:
        """:meth:`resolve`, awaited (two concurrent first calls may both probe; harmless)."""
        if self.resolved:
            return
        info = self._json(await self._aget("/info"))
        has_models = self._needs_models(info) and await self._aget("/v1/models") is not None
        if not self.resolved:
            self._settle(info, has_models)
