"""The uvicorn HTTP protocol :func:`~bge_rerank_plugins.server.run_server` uses: uvicorn's own,
closing connections whose request headers stall."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["with_header_timeout"]

logger = logging.getLogger(__name__)


def with_header_timeout(base: type[asyncio.Protocol], timeout_s: float) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's HTTP protocol) closing connections whose request headers stall.

    A timer runs from the moment a connection opens, and again from the end of each response,
    until the next request's headers are complete (uvicorn then starts a request cycle). If it
    fires first, the connection is closed: a client that connects and sends nothing, or sends
    part of its headers, cannot hold a connection for ever. uvicorn's own ``timeout_keep_alive``
    only covers idle connections that have sent no byte since their last response.
    """

    class HeaderTimeoutProtocol(base):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            if self.transport is None or self.transport.is_closing():
                return
            cycle = getattr(self, "cycle", None)
            self._header_timer = self.loop.call_later(timeout_s, self._header_timed_out, cycle)

        def _header_timed_out(self, armed_cycle: Any) -> None:
            self._header_timer = None
            cycle = getattr(self, "cycle", None)
            if cycle is not armed_cycle:
                return  # a request arrived since; its response arms the timer again
            if cycle is not None and not cycle.response_complete:
                return  # a request is in flight (its body has a timeout of its own)
            if not self.transport.is_closing():
                logger.info(
                    "Closed a connection from %s: no complete request headers within %g s "
                    "(server setting request_header_timeout_s).",
                    getattr(self, "client", None),
                    timeout_s,
                )
                self.transport.close()

    HeaderTimeoutProtocol.__name__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeoutProtocol
