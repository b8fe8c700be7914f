#!/usr/bin/env python3
"""XMPP benchmark for edgelab's ejabberd: round trips between two agents, and
hundreds of connected agents sending heartbeats, against one or more servers in
the same run (the lab's config and, as the baseline, Debian's stock config).

Run by benchmarks/xmpp_bench.yml, which creates the accounts and the baseline
server and passes everything on standard input (no password on a command line):

  {"targets": [{"name": "edgelab", "address": "10.0.0.11", "port": 5222,
                "domain": "10.0.0.11", "ca": "/path/ca.crt",
                "pair": [{"jid": ..., "password": ...}, {"jid": ..., "password": ...}],
                "fleet": [{"jid": ..., "password": ...}, ...]}, ...],
   "latency_round_trips": 1000, "throughput_round_trips": 10000, "window": 32,
   "phase_seconds": 20, "heartbeat_interval": 5, "heartbeat_seconds": 60,
   "login_concurrency": 25}

Phases, per target, each bounded in count and in time:
  1. latency: one message in flight, A -> B -> A; p50/p99 of the round trip
     (A runs here, B in a second process so that the two clients use two cores);
  2. throughput: `window` messages in flight between the same pair; round trips/s,
     and the CPU seconds the clients used (to tell a client-bound result);
  3. fleet (targets with a "fleet"): every fleet agent logs in (STARTTLS, the
     server certificate verified against the edgelab CA, SCRAM), then sends a
     heartbeat message every `heartbeat_interval` s to the first fleet agent,
     which answers it; p50/p99 of those round trips, and the pair's latency
     measured again while the fleet is connected.
Prints a table and one JSON line (prefix "RESULT ") with every figure.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import multiprocessing
import os
import platform
import random
import ssl
import sys
import time
from xml.sax.saxutils import escape, quoteattr

import slixmpp
from slixmpp.util.sasl import mechanisms

CHAT = "<message to=%s type='chat'><body>%s</body></message>"


def _pbkdf2_hi(self, text, salt, iterations):
    """SCRAM's Hi() with hashlib's C PBKDF2 instead of slixmpp's pure-Python loop,
    so that logging in 500 agents measures the server, not this client."""
    return hashlib.pbkdf2_hmac(self.hash().name, bytes(text), salt, iterations)


mechanisms.SCRAM.Hi = _pbkdf2_hi


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[index]


_CONTEXTS = {}


def tls_context(ca):
    """One TLS context per CA file, shared by all clients: certificate and host name
    verified against that CA only. (slixmpp would otherwise build a context with the
    system's CA bundle for every client, ~0.1 s of CPU each.)"""
    if ca not in _CONTEXTS:
        _CONTEXTS[ca] = ssl.create_default_context(cafile=ca)
    return _CONTEXTS[ca]


class Client(slixmpp.ClientXMPP):
    """STARTTLS-only client verifying the server against the given CA."""

    def __init__(self, jid, password, ca, handler=None):
        super().__init__(jid, password, ssl_context=tls_context(ca))
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.enable_plaintext = False
        self.whitespace_keepalive = False
        self.ready = asyncio.get_event_loop().create_future()
        self.handler = handler
        self.tls = None
        self.add_event_handler("session_start", self._started)
        for event in ("failed_all_auth", "ssl_invalid_chain", "connection_failed"):
            self.add_event_handler(event, lambda _e, event=event: self._fail(event))
        self.add_event_handler("message", self._message)

    def _fail(self, why):
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"{self.boundjid.bare}: {why}"))

    async def _started(self, _event):
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        if ssl_object is not None:
            self.tls = f"{ssl_object.version()} {ssl_object.cipher()[0]}"
        self.send_presence()
        if not self.ready.done():
            self.ready.set_result(True)

    def _message(self, msg):
        if self.handler is not None and msg["type"] == "chat":
            self.handler(self, msg)

    def chat(self, to, body):
        """Send a chat message as raw XML (cheaper than building a stanza object)."""
        self.send_raw(CHAT % (quoteattr(str(to)), escape(body)))


async def login(target, account, handler=None, timeout=30):
    client = Client(account["jid"], account["password"], target["ca"], handler)
    started = time.perf_counter()
    client.connect(target["address"], target["port"])
    await asyncio.wait_for(client.ready, timeout)
    return client, (time.perf_counter() - started) * 1000.0


async def logout(clients):
    await asyncio.gather(*(c.disconnect(wait=2.0) for c in clients if c.transport is not None),
                         return_exceptions=True)


def _echo_process(target, account, conn):
    """Agent B, in its own process: answer every chat message with the same body."""
    logging.basicConfig(level=logging.CRITICAL)

    async def run():
        client, _ = await login(target, account, lambda c, msg: c.chat(msg["from"], msg["body"]))
        conn.send(client.boundjid.full)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
        conn.send(time.process_time())
        await logout([client])

    asyncio.run(run())


class Pair:
    """Agent A (here) sends numbered messages to B (another process, so that the
    two clients use two cores), B sends each back, A times the round trip."""

    def __init__(self):
        self.pending = {}
        self.done = []
        self.event = asyncio.Event()
        self.a = None
        self.b_jid = None
        self.process = self.conn = None

    async def start(self, target):
        context = multiprocessing.get_context("spawn")  # arguments go through a pipe, not argv
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_echo_process, args=(target, target["pair"][1], child), daemon=True)
        self.process.start()
        loop = asyncio.get_running_loop()
        ready = loop.run_in_executor(None, self.conn.poll, 60)
        self.a, login_a = await login(target, target["pair"][0], self.on_a)
        if not await ready:
            raise RuntimeError("agent B did not log in")
        self.b_jid = self.conn.recv()
        return login_a

    async def stop(self):
        await logout([self.a])
        self.conn.send("stop")
        loop = asyncio.get_running_loop()
        b_cpu = self.conn.recv() if await loop.run_in_executor(None, self.conn.poll, 15) else None
        await loop.run_in_executor(None, self.process.join, 15)
        if self.process.is_alive():
            self.process.kill()
        return b_cpu

    def on_a(self, _client, msg):
        sent = self.pending.pop(msg["body"], None)
        if sent is not None:
            self.done.append((time.perf_counter() - sent) * 1000.0)
            self.event.set()

    def send(self, seq):
        body = "rt-%d" % seq
        self.pending[body] = time.perf_counter()
        self.a.chat(self.b_jid, body)

    async def run(self, count, window, seconds):
        """Up to `count` round trips with `window` in flight, for at most `seconds`."""
        self.done, self.pending = [], {}
        seq, started, cpu0 = 0, time.perf_counter(), time.process_time()
        deadline = started + seconds
        while len(self.done) < count and time.perf_counter() < deadline:
            while len(self.pending) < window and seq < count:
                self.send(seq)
                seq += 1
            self.event.clear()
            try:
                await asyncio.wait_for(self.event.wait(), max(0.001, deadline - time.perf_counter()))
            except asyncio.TimeoutError:
                break
        elapsed = time.perf_counter() - started
        return {
            "round_trips": len(self.done),
            "seconds": round(elapsed, 3),
            "per_second": round(len(self.done) / elapsed, 1) if elapsed > 0 else None,
            "p50_ms": _r(percentile(self.done, 50)),
            "p99_ms": _r(percentile(self.done, 99)),
            "max_ms": _r(max(self.done) if self.done else None),
            "lost_or_late": len(self.pending),
            "client_a_cpu_s": round(time.process_time() - cpu0, 3),
        }


def _r(value):
    return None if value is None else round(value, 3)


async def fleet_phase(target, cfg, pair):
    accounts = target["fleet"]
    interval, seconds = cfg["heartbeat_interval"], cfg["heartbeat_seconds"]
    rtts, sent_at = [], {}

    def collector_handler(client, msg):
        client.chat(msg["from"], msg["body"])

    def agent_handler(_client, msg):
        sent = sent_at.pop(msg["body"], None)
        if sent is not None:
            rtts.append((time.perf_counter() - sent) * 1000.0)

    collector, _ = await login(target, accounts[0], collector_handler)
    clients, login_ms = [collector], []
    semaphore = asyncio.Semaphore(cfg["login_concurrency"])
    login_started, login_cpu0 = time.perf_counter(), time.process_time()

    async def one(account):
        async with semaphore:
            client, ms = await login(target, account, agent_handler)
            clients.append(client)
            login_ms.append(ms)

    results = await asyncio.gather(*(one(a) for a in accounts[1:]), return_exceptions=True)
    failures = [str(r) for r in results if isinstance(r, BaseException)]
    login_seconds = time.perf_counter() - login_started
    login_cpu = time.process_time() - login_cpu0
    agents = clients[1:]

    async def heartbeats(client, index):
        # Spread the agents over the interval, then one heartbeat every `interval` s.
        await asyncio.sleep(random.uniform(0, interval))
        beat = 0
        while time.perf_counter() < stop_at:
            body = "hb-%d-%d" % (index, beat)
            sent_at[body] = time.perf_counter()
            client.chat(collector.boundjid.bare, body)
            beat += 1
            await asyncio.sleep(interval)

    stop_at = time.perf_counter() + seconds
    tasks = [asyncio.ensure_future(heartbeats(c, i)) for i, c in enumerate(agents)]
    # The pair's latency while the fleet is connected and beating.
    await asyncio.sleep(min(interval, seconds / 2))
    under_load = await pair.run(cfg["latency_round_trips"], 1, cfg["phase_seconds"])
    await asyncio.gather(*tasks)
    await asyncio.sleep(1)  # let the last answers arrive
    await logout(clients)
    return {
        "agents_connected": len(agents) + 1,
        "login_failures": len(failures),
        "login_failure_sample": failures[:3],
        "login_seconds_all": round(login_seconds, 2),
        "login_client_cpu_s": round(login_cpu, 2),
        "login_p50_ms": _r(percentile(login_ms, 50)),
        "login_p99_ms": _r(percentile(login_ms, 99)),
        "heartbeat_interval_s": interval,
        "heartbeats_answered": len(rtts),
        "heartbeats_unanswered": len(sent_at),
        "heartbeat_p50_ms": _r(percentile(rtts, 50)),
        "heartbeat_p99_ms": _r(percentile(rtts, 99)),
        "heartbeat_max_ms": _r(max(rtts) if rtts else None),
        "pair_latency_under_load": under_load,
    }


async def bench_target(target, cfg):
    pair = Pair()
    login_a = await pair.start(target)
    out = {"name": target["name"], "tls": pair.a.tls, "login_ms": _r(login_a)}
    await pair.run(50, 1, 10)  # warm-up
    out["latency"] = await pair.run(cfg["latency_round_trips"], 1, cfg["phase_seconds"])
    out["throughput"] = await pair.run(cfg["throughput_round_trips"], cfg["window"], cfg["phase_seconds"])
    if target.get("fleet"):
        out["fleet"] = await fleet_phase(target, cfg, pair)
    out["client_b_cpu_s_total"] = _r(await pair.stop())
    return out


def print_table(results, cfg):
    print("%-14s %-30s %9s %9s %11s" % ("server", "TLS", "p50 ms", "p99 ms", "round trips/s"))
    for r in results:
        print("%-14s %-30s %9s %9s %11s" % (r["name"], r["tls"], r["latency"]["p50_ms"], r["latency"]["p99_ms"],
                                           r["throughput"]["per_second"]))
    for r in results:
        f = r.get("fleet")
        if f:
            print("%s fleet: %d agents connected (%d login failures) in %.1f s, login p50 %s ms p99 %s ms; "
                  "heartbeat every %ss: %d answered, %d unanswered, p50 %s ms, p99 %s ms, max %s ms; "
                  "pair latency meanwhile p50 %s ms p99 %s ms"
                  % (r["name"], f["agents_connected"], f["login_failures"], f["login_seconds_all"], f["login_p50_ms"],
                     f["login_p99_ms"], f["heartbeat_interval_s"], f["heartbeats_answered"], f["heartbeats_unanswered"],
                     f["heartbeat_p50_ms"], f["heartbeat_p99_ms"], f["heartbeat_max_ms"],
                     f["pair_latency_under_load"]["p50_ms"], f["pair_latency_under_load"]["p99_ms"]))


def check_targets(results):
    """The issue's targets, for the first target (the lab's config)."""
    lab = results[0]
    checks = {
        "rtt_p50_le_2ms": lab["latency"]["p50_ms"] is not None and lab["latency"]["p50_ms"] <= 2.0,
        "round_trips_per_s_ge_2500": (lab["throughput"]["per_second"] or 0) >= 2500,
    }
    if lab.get("fleet"):
        f = lab["fleet"]
        checks["fleet_500_connected"] = f["agents_connected"] >= 500 and f["login_failures"] == 0
        checks["heartbeat_p99_le_20ms"] = f["heartbeat_p99_ms"] is not None and f["heartbeat_p99_ms"] <= 20.0
    return checks


async def main_async(cfg):
    results = []
    for target in cfg["targets"]:
        results.append(await asyncio.wait_for(bench_target(target, cfg), cfg.get("target_timeout", 600)))
    return results


def main():
    logging.basicConfig(level=logging.CRITICAL)
    cfg = json.load(sys.stdin)
    cfg.setdefault("latency_round_trips", 1000)
    cfg.setdefault("throughput_round_trips", 10000)
    cfg.setdefault("window", 32)
    cfg.setdefault("phase_seconds", 20)
    cfg.setdefault("heartbeat_interval", 5)
    cfg.setdefault("heartbeat_seconds", 60)
    cfg.setdefault("login_concurrency", 25)
    load_before = os.getloadavg()
    results = asyncio.run(main_async(cfg))
    load_after = os.getloadavg()
    print_table(results, cfg)
    print("machine: %d cores, load average before %.2f, after %.2f (1 min)"
          % (os.cpu_count(), load_before[0], load_after[0]))
    checks = check_targets(results)
    summary = {
        "client": {"python": platform.python_version(), "slixmpp": slixmpp.__version__, "host": platform.node(),
                   "cores": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after},
        "settings": {k: v for k, v in cfg.items() if k != "targets"},
        "results": results,
        "targets_met": checks,
    }
    print("targets: " + ", ".join("{}={}".format(k, "met" if v else "MISSED") for k, v in checks.items()))
    print("RESULT " + json.dumps(summary, sort_keys=True))
    return 0 if all(checks.values()) else 2


if __name__ == "__main__":
    sys.exit(main())
