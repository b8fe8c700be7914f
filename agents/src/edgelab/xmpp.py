"""The agents' XMPP side (slixmpp): STARTTLS verified against the edgelab CA, presence
subscription between node and cluster agents, reconnection with capped exponential
backoff and jitter, a bounded outgoing queue, and a clean stop.

AgentLink owns one slixmpp client and a supervisor task: connect, wait for the session,
flush the queue, and when the stream is lost wait min(cap, base * 2**n) * U(0.5, 1) and
connect again (slixmpp's own retry waits up to 300 s; the cap here is 5 s so that all
agents are back within 15 s of an ejabberd restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import signal
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import slixmpp
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from slixmpp.util.sasl import mechanisms

from . import messages

log = logging.getLogger(__name__)

CHAT = "<message to=%s type='chat'><body>%s</body></message>"


def _pbkdf2_hi(self: Any, text: bytes, salt: bytes, iterations: int) -> bytes:
    """SCRAM Hi() with hashlib's C PBKDF2 instead of slixmpp's pure-Python loop."""
    return hashlib.pbkdf2_hmac(self.hash().name, bytes(text), salt, iterations)


mechanisms.SCRAM.Hi = _pbkdf2_hi  # type: ignore[method-assign, assignment]

_CONTEXTS: dict[str, ssl.SSLContext] = {}


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Verify the server certificate and name against this CA only (one context per file)."""
    if ca_file not in _CONTEXTS:
        _CONTEXTS[ca_file] = ssl.create_default_context(cafile=ca_file)
    return _CONTEXTS[ca_file]


def backoff_delay(attempt: int, base: float = 0.25, cap: float = 5.0, rng: random.Random | None = None) -> float:
    """Exponential backoff with 'equal jitter': in [d/2, d], d = min(cap, base * 2**attempt)."""
    delay = min(cap, base * (2 ** min(attempt, 30)))
    return delay * (0.5 + 0.5 * (rng or random).random())


class RateLimitedLog:
    """At most one line per `interval` seconds for a recurring warning; the lines it
    held back are counted in the next one ("... (12 more since the last)")."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.suppressed = 0
        self._last: float | None = None

    def warning(self, fmt: str, *args: object) -> bool:
        """Log now (True) or count it for later (False)."""
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            self.suppressed += 1
            return False
        if self.suppressed:
            fmt += " (%d more since the last)"
            args = (*args, self.suppressed)
        self.logger.warning(fmt, *args)
        self._last = now
        self.suppressed = 0
        return True


class BoundedQueue:
    """FIFO of outgoing (to, body) items; when full the oldest is dropped, counted and
    logged (rate-limited)."""

    def __init__(self, maxlen: int = 256, name: str = "xmpp") -> None:
        self.items: deque[tuple[str, str]] = deque()
        self.maxlen = maxlen
        self.name = name
        self.dropped = 0
        self._warn = RateLimitedLog(log)

    def put(self, item: tuple[str, str]) -> None:
        if len(self.items) >= self.maxlen:
            self.items.popleft()
            self.dropped += 1
            self._warn.warning("%s: outgoing queue full (%d): dropped the oldest message, %d dropped so far",
                               self.name, self.maxlen, self.dropped)
        self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)


MessageHandler = Callable[[str, messages.Message], Any]


class AgentLink:
    """One agent's XMPP connection.

    handler(sender_bare_jid, message) is called for every valid message from a JID in
    `peers`; all others and every malformed body are counted (dropped_foreign,
    dropped_invalid; exported by observe()) and dropped, with a warning at most once a
    minute per kind. Only peers are tracked in `available`.
    """

    def __init__(self, jid: str, password: str, *, host: str, port: int, ca_file: str,
                 peers: set[str], handler: MessageHandler, subscribe_to: set[str] | None = None,
                 queue_size: int = 256, backoff_cap: float = 5.0,
                 on_peer_available: Callable[[str], Any] | None = None) -> None:
        self.jid = jid
        self.host = host
        self.port = port
        self.peers = {p.lower() for p in peers}
        self.subscribe_to = subscribe_to or set()
        self.handler = handler
        self.on_peer_available = on_peer_available
        self.queue = BoundedQueue(queue_size, name=f"xmpp {jid}")
        self.backoff_cap = backoff_cap
        self.online = asyncio.Event()
        self.sessions = 0
        self.dropped_invalid = 0
        self.dropped_foreign = 0
        self.available: set[str] = set()
        self.presence_in = 0
        self._asked: set[str] = set()
        self._lost = asyncio.Event()
        self._failed = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._handler_tasks: set[asyncio.Future[Any]] = set()
        self._warn_foreign = RateLimitedLog(log)
        self._warn_invalid = RateLimitedLog(log)
        self._warn_subscribe = RateLimitedLog(log)
        client = slixmpp.ClientXMPP(jid, password, ssl_context=tls_context(ca_file))
        client.enable_direct_tls = False
        client.enable_starttls = True
        client.enable_plaintext = False
        # Subscriptions are decided in _presence_subscribe alone. auto_authorize None
        # keeps slixmpp from answering requests itself (with False it answers every one
        # "unsubscribed", which _presence_subscribe would re-request: an endless
        # subscribe/unsubscribed exchange per peer; tests/agents: presence settles).
        client.roster.auto_authorize = None
        client.roster.auto_subscribe = False
        client.add_event_handler("session_start", self._session_start)
        client.add_event_handler("disconnected", self._disconnected)
        for event in ("connection_failed", "failed_all_auth", "ssl_invalid_chain", "ssl_invalid_cert"):
            client.add_event_handler(event, self._make_failure(event))
        client.add_event_handler("message", self._message)
        client.add_event_handler("presence", self._presence)
        client.add_event_handler("presence_subscribe", self._presence_subscribe)
        client.add_event_handler("presence_available", self._presence_available)
        client.add_event_handler("presence_unavailable", self._presence_unavailable)
        self.client = client

    # -- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name=f"xmpp {self.jid}")

    async def stop(self, wait: float = 2.0) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.client.cancel_connection_attempt()
        if self.client.transport is not None:
            try:
                await asyncio.wait_for(self.client.disconnect(wait=wait), wait + 1.0)
            except (asyncio.TimeoutError, Exception):
                self.client.abort()
        self.online.clear()

    async def _supervise(self) -> None:
        attempt = 0
        while not self._stopping:
            self._lost.clear()
            self._failed.clear()
            self.client.connect(self.host, self.port)
            lost = asyncio.ensure_future(self._lost.wait())
            failed = asyncio.ensure_future(self._failed.wait())
            online = asyncio.ensure_future(self.online.wait())
            try:
                await asyncio.wait({lost, failed, online}, timeout=15.0, return_when=asyncio.FIRST_COMPLETED)
                if self.online.is_set() and not self._lost.is_set():
                    attempt = 0
                    await lost  # connected: until the stream goes away
            finally:
                for fut in (lost, failed, online):
                    fut.cancel()
            self.online.clear()
            # Stop slixmpp's own rescheduled attempt (it backs off up to 300 s).
            self.client.cancel_connection_attempt()
            if self.client.transport is not None:
                self.client.abort()
            delay = backoff_delay(attempt, cap=self.backoff_cap)
            attempt += 1
            log.warning("xmpp %s: not connected, retrying in %.2fs", self.jid, delay)
            await asyncio.sleep(delay)

    # -- events ----------------------------------------------------------
    def _make_failure(self, event: str) -> Callable[[Any], None]:
        def failed(detail: Any) -> None:
            log.warning("xmpp %s: %s: %s", self.jid, event, detail)
            self._failed.set()
        return failed

    def _session_start(self, _event: Any) -> None:
        self.sessions += 1
        self._asked = set(self.subscribe_to)
        self.client.send_presence()
        for peer in self.subscribe_to:
            self.client.send_presence(pto=peer, ptype="subscribe")
        log.info("xmpp %s: session started (#%d)", self.jid, self.sessions)
        self.online.set()
        self.flush()

    def _disconnected(self, _reason: Any) -> None:
        self.online.clear()
        self.available.clear()
        self._lost.set()

    def _presence(self, _pres: Any) -> None:
        self.presence_in += 1  # every presence stanza received (a bounded number per session)

    def _presence_subscribe(self, pres: Any) -> None:
        peer = pres["from"].bare.lower()
        if peer in self.peers:
            self.client.send_presence(pto=peer, ptype="subscribed")
            if peer not in self._asked:  # ask back once per session, never in a loop
                self._asked.add(peer)
                self.client.send_presence(pto=peer, ptype="subscribe")
        else:
            self._warn_subscribe.warning("xmpp %s: refused presence subscription from %s", self.jid, peer[:80])
            self.client.send_presence(pto=peer, ptype="unsubscribed")

    def _presence_available(self, pres: Any) -> None:
        peer = pres["from"].bare.lower()
        if peer not in self.peers:
            return
        if peer not in self.available and self.on_peer_available is not None:
            # A peer (re)appeared: e.g. the cluster agent logged in again after a server
            # restart; the node agent reports at once instead of at its next interval.
            try:
                self.on_peer_available(peer)
            except Exception:
                log.exception("xmpp %s: peer-available callback failed", self.jid)
        self.available.add(peer)

    def _presence_unavailable(self, pres: Any) -> None:
        self.available.discard(pres["from"].bare.lower())

    def _message(self, msg: Any) -> None:
        if msg["type"] not in ("chat", "normal"):
            return
        sender = msg["from"].bare.lower()
        if sender not in self.peers:
            self.dropped_foreign += 1
            self._warn_foreign.warning("xmpp %s: dropped message from unknown sender %s (%d so far)", self.jid,
                                       sender[:80], self.dropped_foreign)
            return
        try:
            decoded = messages.decode(msg["body"])
        except messages.DecodeError as exc:
            self.dropped_invalid += 1
            self._warn_invalid.warning("xmpp %s: dropped malformed message from %s: %s (%d so far)", self.jid,
                                       sender, exc, self.dropped_invalid)
            return
        try:
            result = self.handler(sender, decoded)
            if asyncio.iscoroutine(result):
                task = asyncio.ensure_future(result)
                self._handler_tasks.add(task)
                task.add_done_callback(self._handler_tasks.discard)
        except Exception:  # a handler bug must not take the connection down
            log.exception("xmpp %s: handler failed on a %s message", self.jid, decoded.TYPE)

    # -- sending ---------------------------------------------------------
    def send(self, to: str, msg: messages.Base) -> None:
        """Queue a message; sent at once when online, else when the session is back."""
        self.queue.put((to, messages.encode(msg)))
        if self.online.is_set():
            self.flush()

    def flush(self) -> None:
        while self.queue.items and self.online.is_set() and self.client.transport is not None:
            to, body = self.queue.items[0]
            try:
                self.client.send_raw(CHAT % (quoteattr(to), escape(body)))
            except Exception as exc:
                log.debug("xmpp %s: send failed: %s", self.jid, exc)
                return
            self.queue.items.popleft()


def observe(link: AgentLink, meter: Meter, agent: str) -> None:
    """Export the link's drop counters: edgelab_agent_xmpp_dropped_total{agent,reason}
    (reason: queue_full, foreign_sender, invalid_message)."""

    def dropped(_options: CallbackOptions) -> Iterable[Observation]:
        for reason, value in (("queue_full", link.queue.dropped), ("foreign_sender", link.dropped_foreign),
                              ("invalid_message", link.dropped_invalid)):
            yield Observation(value, {"agent": agent, "reason": reason})

    meter.create_observable_counter("edgelab.agent.xmpp_dropped", callbacks=[dropped],
                                    description="XMPP messages dropped, by reason")


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop` (the agent then shuts down and exits 0)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
