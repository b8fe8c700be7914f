"""End-to-end XMPP checks of an edgelab ejabberd, run from the controller with slixmpp.

Reads a JSON object on standard input (so that no password is on a command line):
  {"address": "10.x.y.z", "port": 5222, "domain": "...", "ca": "/path/ca.crt",
   "agents": [{"jid": "a@domain", "password": "..."}, {"jid": "b@domain", "password": "..."}]}
Prints one JSON object with each check's outcome and exits 1 if any check failed.

Checks: both agents log in over STARTTLS with the server certificate verified
against the edgelab CA (hostname = the XMPP domain) and exchange messages;
without the edgelab CA the certificate is not trusted; a
wrong password is refused; an unregistered JID is refused; an in-band
registration attempt is refused (and the account does not appear); a message
sent to an agent while it is offline arrives when it logs in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import sys
import uuid
from pathlib import Path

import slixmpp
import slixmpp.exceptions

TIMEOUT = 20


class Agent(slixmpp.ClientXMPP):
    """A client that reports how its login ended and queues received chat bodies."""

    def __init__(self, jid, password, ca):
        super().__init__(jid, password)
        # Verify the server against the edgelab CA (ca=None: the system's CAs only,
        # which must NOT trust the server).
        self.ssl_context = ssl.create_default_context(cafile=ca)
        if ca is not None:
            self.ca_certs = Path(ca)
        # STARTTLS on the client port, nothing else: no direct TLS, never plaintext.
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.enable_plaintext = False
        self.outcome = asyncio.get_event_loop().create_future()
        self.inbox = asyncio.Queue()
        self.events = []
        self.tls_version = None
        self.register_plugin("xep_0199")
        self.add_event_handler("session_start", self._started)
        self.add_event_handler("failed_all_auth", lambda _e: self._end("auth_refused"))
        self.add_event_handler("ssl_invalid_chain", lambda _e: self._end("tls_invalid_chain"))
        self.add_event_handler("connection_failed", lambda _e: self._end("connection_failed"))
        self.add_event_handler("disconnected", lambda _e: self._end("disconnected"))
        self.add_event_handler("message", self._message)

    def _end(self, outcome):
        self.events.append(outcome)
        if not self.outcome.done():
            self.outcome.set_result(outcome)

    async def _started(self, _event):
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        self.tls_version = ssl_object.version() if ssl_object else None
        self.send_presence()
        self._end("session_started")

    def _message(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.inbox.put_nowait(msg["body"])


async def login(cfg, jid, password, ca="edgelab"):
    agent = Agent(jid, password, cfg["ca"] if ca == "edgelab" else ca)
    agent.connect(cfg["address"], cfg["port"])
    try:
        outcome = await asyncio.wait_for(agent.outcome, TIMEOUT)
    except asyncio.TimeoutError:
        outcome = "timeout"
    return agent, outcome


async def close(agent):
    if agent.transport is not None:
        await agent.disconnect(wait=2.0)


async def session_gone(agent, full_jid):
    """Whether the server reports full_jid's session gone within TIMEOUT: a ping
    (XEP-0199) to it is answered by the client while its session lasts and by an
    error from the server afterwards."""
    deadline = asyncio.get_event_loop().time() + TIMEOUT
    while asyncio.get_event_loop().time() < deadline:
        try:
            await agent.plugin["xep_0199"].send_ping(full_jid, timeout=5)
        except slixmpp.exceptions.IqError:
            return True
        except slixmpp.exceptions.IqTimeout:
            pass
        await asyncio.sleep(0.2)
    return False


async def expect_body(agent, body):
    deadline = asyncio.get_event_loop().time() + TIMEOUT
    while True:
        remaining = deadline - asyncio.get_event_loop().time()
        if remaining <= 0:
            return False
        try:
            got = await asyncio.wait_for(agent.inbox.get(), remaining)
        except asyncio.TimeoutError:
            return False
        if got == body:
            return True


async def _read_until(reader, markers, timeout=TIMEOUT):
    """Read until one of the byte markers shows up, the stream ends, or the timeout."""
    data = b""
    loop = asyncio.get_event_loop()
    deadline = loop.time() + timeout
    while not any(m in data for m in markers):
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            chunk = await asyncio.wait_for(reader.read(65536), remaining)
        except asyncio.TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


async def in_band_registration(cfg, username, password):
    """Try XEP-0077 registration the way a client would: STARTTLS (verified), then
    an unauthenticated jabber:iq:register set. Returns what the server did."""
    domain = cfg["domain"]
    header = (f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
              "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").encode()
    reader, writer = await asyncio.open_connection(cfg["address"], cfg["port"])
    try:
        writer.write(header)
        await _read_until(reader, [b"</stream:features>"])
        writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await _read_until(reader, [b"<proceed"])
        await writer.start_tls(ssl.create_default_context(cafile=cfg["ca"]), server_hostname=domain)
        writer.write(header)
        features = await _read_until(reader, [b"</stream:features>"])
        writer.write((f"<iq type='set' id='ibr1'><query xmlns='jabber:iq:register'><username>{username}</username>"
                      f"<password>{password}</password></query></iq>").encode())
        answer = await _read_until(reader, [b"</iq>", b"/>", b"</stream:stream>"])
    finally:
        writer.close()
    if b"type='result'" in answer or b'type="result"' in answer:
        outcome = "result"
    elif b"type='error'" in answer or b'type="error"' in answer:
        outcome = "iq_error"
    elif b"stream:error" in answer or b"</stream:stream>" in answer or not answer:
        outcome = "stream_closed"
    else:
        outcome = "other"
    return {
        "answer": outcome,
        "register_feature_offered": b"jabber.org/features/iq-register" in features,
        "server_said": answer.decode("utf-8", "replace")[:300],
    }


async def run(cfg):
    results = {}
    a_cfg, b_cfg = cfg["agents"][:2]
    domain = cfg["domain"]

    a, outcome_a = await login(cfg, a_cfg["jid"], a_cfg["password"])
    b, outcome_b = await login(cfg, b_cfg["jid"], b_cfg["password"])
    results["login_over_verified_tls"] = {
        "ok": outcome_a == outcome_b == "session_started" and a.tls_version in ("TLSv1.2", "TLSv1.3"),
        "a": outcome_a, "b": outcome_b, "tls": a.tls_version,
    }

    ping, pong = "ping-" + uuid.uuid4().hex, "pong-" + uuid.uuid4().hex
    a.send_message(mto=b_cfg["jid"], mbody=ping, mtype="chat")
    got_ping = await expect_body(b, ping)
    b.send_message(mto=a_cfg["jid"], mbody=pong, mtype="chat")
    got_pong = await expect_body(a, pong)
    results["message_exchange"] = {"ok": got_ping and got_pong, "a_to_b": got_ping, "b_to_a": got_pong}

    # Offline delivery: b leaves, a writes, b comes back and gets it. a writes once
    # the server has ended b's session (a ping to b's full JID gets an error), not
    # after a fixed pause that a loaded machine can outlast.
    b_full = b.boundjid.full
    await close(b)
    results["offline_delivery_session_ended"] = {"ok": await session_gone(a, b_full)}
    offline = "offline-" + uuid.uuid4().hex
    a.send_message(mto=b_cfg["jid"], mbody=offline, mtype="chat")
    await asyncio.sleep(1)
    b2, outcome_b2 = await login(cfg, b_cfg["jid"], b_cfg["password"])
    got_offline = outcome_b2 == "session_started" and await expect_body(b2, offline)
    results["offline_delivery"] = {"ok": got_offline, "relogin": outcome_b2}
    await close(b2)
    await close(a)

    # Without the edgelab CA the server certificate is not trusted: verification is on.
    untrusted, outcome = await login(cfg, a_cfg["jid"], a_cfg["password"], ca=None)
    # The TLS failure may be reported just after the disconnection.
    deadline = asyncio.get_event_loop().time() + TIMEOUT
    while "tls_invalid_chain" not in untrusted.events and asyncio.get_event_loop().time() < deadline:
        await asyncio.sleep(0.1)
    results["untrusted_without_edgelab_ca"] = {
        "ok": outcome != "session_started" and "tls_invalid_chain" in untrusted.events, "events": untrusted.events,
    }
    await close(untrusted)

    # A wrong password and an unregistered JID are refused.
    bad, outcome = await login(cfg, a_cfg["jid"], a_cfg["password"] + "-wrong")
    results["wrong_password_refused"] = {"ok": outcome == "auth_refused", "outcome": outcome}
    await close(bad)
    ghost_jid = f"ghost-{uuid.uuid4().hex[:8]}@{domain}"
    ghost, outcome = await login(cfg, ghost_jid, "whatever-" + uuid.uuid4().hex)
    results["unregistered_jid_refused"] = {"ok": outcome == "auth_refused", "outcome": outcome}
    await close(ghost)

    # In-band registration (XEP-0077) before authentication: refused, and the
    # account does not exist afterwards.
    newcomer = f"ibr-{uuid.uuid4().hex[:8]}"
    newcomer_password = "ibr-" + uuid.uuid4().hex
    attempt = await in_band_registration(cfg, newcomer, newcomer_password)
    check, outcome_after = await login(cfg, f"{newcomer}@{domain}", newcomer_password)
    await close(check)
    results["in_band_registration_refused"] = {
        "ok": attempt["answer"] != "result" and outcome_after == "auth_refused",
        "login_afterwards": outcome_after, **attempt,
    }
    return results


def main():
    logging.basicConfig(level=logging.CRITICAL)
    cfg = json.load(sys.stdin)
    results = asyncio.run(asyncio.wait_for(run(cfg), 240))
    failed = [name for name, r in results.items() if not r["ok"]]
    print(json.dumps({"checks": results, "failed": failed}, indent=2, sort_keys=True))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
