#!/usr/bin/env python3
"""Benchmark of edgelab's agents against a real loopback ejabberd (Debian package,
started like tests/integration/ejabberd_server.py does; needs root).

  .venv/bin/python benchmarks/agents_bench.py [--nodes 200] [--seconds 60] [--interval 5]

In one run:
  (a) `--nodes` simulated node agents (edgelab.xmpp.AgentLink clients in a second
      process; each sends a heartbeat and a prediction every interval and answers
      scale commands) + the real ClusterAgent (this process, xmpp actuator) for
      `--seconds`: heartbeats missed, node inactive transitions, decision latency
      (prediction received -> command acknowledged) p50/p99;
  (c) the real `edgelab-node-agent` entry point (default online model, fake
      systemctl) at the same interval over the same window: RSS and CPU, next to
      an idle `python3` process's RSS measured in the same run;
  (d) for that node agent (its target alternates 1, 2, 1, ... so every sample is
      acted on: AlternateForReal): telemetry sample taken -> decision made and -> scale
      applied (result received), p50;
  (b) then `ejabberdctl restart`: seconds until every agent is logged in again and
      the cluster agent has had a message from every node.
Each figure is printed with the load average. Prints one JSON line "RESULT {...}".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the shared test helpers: tests/support

from edgelab import messages  # noqa: E402
from edgelab.cluster_agent.agent import ClusterAgent  # noqa: E402
from edgelab.cluster_agent.policy import Decision, Policy, PolicyState  # noqa: E402
from edgelab.config import ClusterConfig, PolicyConfig  # noqa: E402
from edgelab.xmpp import AgentLink  # noqa: E402
from support import ejabberd_server  # noqa: E402
from support.agenttools import FAKE_SYSTEMCTL  # noqa: E402


class AlternateForReal:
    """The bench's policy: the real one for the simulated nodes; for the real node agent
    a target that alternates 1, 2, 1, ... on every prediction, so that each of its
    telemetry samples goes the whole way (prediction -> decision -> command -> systemctl
    -> result) and (d) has a figure per interval. Everything measured stays real."""

    def __init__(self, base: Policy) -> None:
        self.base = base
        self.name = base.name
        self.real_states: set[int] = set()

    def initial(self, reported_instances: int) -> PolicyState:
        return self.base.initial(reported_instances)

    def real_initial(self) -> PolicyState:
        state = PolicyState(current=1)
        self.real_states.add(id(state))
        return state

    def decide(self, state: PolicyState, prediction: float) -> Decision:
        if id(state) not in self.real_states:
            return self.base.decide(state, prediction)
        state.current = 3 - state.current
        return Decision("scale_up" if state.current == 2 else "scale_down", state.current, state.current)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def ms(v: float | None) -> str:
    return "n/a" if v is None else "%.1f ms" % (v * 1000)


# -- simulated node agents (child process) -----------------------------------------
def _sim_process(target: dict[str, Any], accounts: list[tuple[str, str]], conn: Any) -> None:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("edgelab.xmpp").setLevel(logging.ERROR)

    async def run() -> None:
        cluster_jid = target["cluster_jid"]
        links: list[AgentLink] = []
        sent = {"heartbeat": 0, "prediction": 0, "result": 0}

        def send_heartbeat(link: AgentLink) -> None:
            link.send(cluster_jid, messages.Heartbeat(**link.seq.stamp(), unit="edgelab-consumer@",  # type: ignore[attr-defined]
                                                      instances=link.state["instances"]))  # type: ignore[attr-defined]
            sent["heartbeat"] += 1

        for name, password in accounts:
            seq = messages.Sequencer(name)
            state = {"instances": 1, "value": random.random()}

            def handler(sender: str, msg: messages.Message, link_ref: list[AgentLink] = [],  # noqa: B006
                        seq: messages.Sequencer = seq, state: dict[str, Any] = state) -> None:
                if isinstance(msg, messages.Command):
                    state["instances"] = msg.instances
                    link_ref[0].send(sender, messages.Result(**seq.stamp(), id=msg.id, ok=True,
                                                              instances=msg.instances, error=""))
                    sent["result"] += 1

            ref: list[AgentLink] = []
            link = AgentLink(f"{name}@{target['domain']}/agent", password, host="127.0.0.1", port=target["port"],
                             ca_file=target["ca"], peers={cluster_jid},
                             handler=lambda s, m, ref=ref, h=handler: h(s, m, ref),
                             subscribe_to={cluster_jid},
                             on_peer_available=lambda _p, ref=ref: send_heartbeat(ref[0]))
            ref.append(link)
            links.append(link)
            link.seq = seq  # type: ignore[attr-defined]
            link.state = state  # type: ignore[attr-defined]
        for i, link in enumerate(links):
            link.start()
            if i % 25 == 24:
                await asyncio.sleep(0.2)
        deadline = time.monotonic() + 120
        while not all(link.online.is_set() for link in links) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        conn.send(("online", sum(link.online.is_set() for link in links)))
        interval = target["interval"]

        async def beat(i: int, link: AgentLink) -> None:
            await asyncio.sleep(interval * i / len(links))
            seq, state = link.seq, link.state  # type: ignore[attr-defined]
            while True:
                send_heartbeat(link)
                state["value"] = min(1.0, max(0.0, state["value"] + random.gauss(0, 0.15)))
                now = time.time()
                link.send(cluster_jid, messages.Prediction(**seq.stamp(), target="cpu_utilisation",
                                                           value=state["value"], model="sim", validation_error=None,
                                                           sample_ts=now))
                sent["prediction"] += 1
                await asyncio.sleep(interval)

        tasks = [asyncio.ensure_future(beat(i, link)) for i, link in enumerate(links)]
        loop = asyncio.get_running_loop()
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd == "sessions":
                conn.send(("sessions", [link.sessions for link in links]))
            elif cmd == "online":
                conn.send(("online", sum(link.online.is_set() for link in links)))
            elif cmd == "stop":
                break
        for t in tasks:
            t.cancel()
        conn.send(("sent", dict(sent), time.process_time()))
        await asyncio.gather(*(link.stop(wait=1.0) for link in links), return_exceptions=True)

    asyncio.run(run())


async def ask(conn: Any, what: str) -> Any:
    conn.send(what)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, conn.recv)


async def bench(args: argparse.Namespace, server: ejabberd_server.Ejabberd, workdir: Path) -> dict[str, Any]:
    domain, ca = server.domain, str(server.dir / "etc" / "server.crt")
    rng = random.Random(7)
    accounts = [(f"sim-{i:03d}", "pw-%08x" % rng.getrandbits(32)) for i in range(args.nodes)]
    real_node = ("node-real", "pw-%08x" % rng.getrandbits(32))
    cluster = ("cluster-bench", "pw-%08x" % rng.getrandbits(32))
    users = "".join(f"<user name='{n}' password='{p}'/>" for n, p in [*accounts, real_node, cluster])
    piefxis = server.dir / "spool" / "bench-users.xml"
    piefxis.write_text("<?xml version='1.0' encoding='UTF-8'?><server-data xmlns='urn:xmpp:pie:0'>"
                       f"<host jid='{domain}'>{users}</host></server-data>")
    os.chown(piefxis, *_ejabberd_ids())
    started = time.monotonic()
    server.ctl("import_piefxis", str(piefxis))
    piefxis.unlink()
    print(f"accounts: {len(accounts) + 2} imported in {time.monotonic() - started:.1f}s; {load()}", flush=True)

    cfg = ClusterConfig(cluster_name=cluster[0], xmpp_domain=domain, xmpp_host="127.0.0.1", xmpp_port=server.c2s_port,
                        ca_file=ca, nodes=[n for n, _ in accounts] + [real_node[0]],
                        heartbeat_interval=args.interval, missed_beats=3, metrics_address="127.0.0.1",
                        policy=PolicyConfig(per_instance=0.05, min_instances=1, max_instances=8, down_after=1))
    cfg.password = cluster[1]
    agent = ClusterAgent(cfg, serve_metrics=False)
    policy = AlternateForReal(agent.policy)
    agent.policy = policy
    agent.nodes[real_node[0]].policy = policy.real_initial()
    decisions_seen = [0]
    real_decisions: list[dict[str, Any]] = []
    real_outcomes: list[dict[str, Any]] = []
    inner_decide, inner_actuate = agent.decide, agent._actuate

    def decide(node: Any, pred: Any, received: float) -> dict[str, Any]:
        record = inner_decide(node, pred, received)
        decisions_seen[0] += 1
        if node.name == real_node[0]:
            real_decisions.append(record)
        return record

    async def actuate(node: Any, target: int, received: float, record: dict[str, Any]) -> None:
        await inner_actuate(node, target, received, record)
        if node.name == real_node[0] and agent.outcomes:
            real_outcomes.append(agent.outcomes[-1])

    agent.decide = decide  # type: ignore[method-assign]
    agent._actuate = actuate  # type: ignore[method-assign]
    heartbeats: dict[str, list[float]] = {n: [] for n in cfg.nodes}
    inner = agent.on_message

    def counting(sender: str, msg: messages.Message) -> None:
        if isinstance(msg, messages.Heartbeat):
            heartbeats.setdefault(sender.partition("@")[0], []).append(time.monotonic())
        inner(sender, msg)

    agent.link.handler = counting
    run_task = asyncio.ensure_future(agent.run())
    while not agent.link.online.is_set():
        await asyncio.sleep(0.05)

    ctx = multiprocessing.get_context("spawn")
    conn, child = ctx.Pipe()
    target = {"domain": domain, "port": server.c2s_port, "ca": ca, "interval": args.interval,
              "cluster_jid": f"{cluster[0]}@{domain}"}
    proc = ctx.Process(target=_sim_process, args=(target, accounts, child), daemon=True)
    t0 = time.monotonic()
    proc.start()
    loop = asyncio.get_running_loop()
    _, online = await loop.run_in_executor(None, conn.recv)
    print(f"(a) {online}/{len(accounts)} simulated node agents logged in in {time.monotonic() - t0:.1f}s; {load()}",
          flush=True)

    # The real node agent process.
    state = workdir / "units"
    state.mkdir()
    (workdir / "systemctl").write_text(FAKE_SYSTEMCTL.format(state=state))
    (workdir / "systemctl").chmod(0o755)
    (workdir / "pw").write_text(real_node[1])
    (workdir / "node-agent.yml").write_text(json.dumps({
        "node_name": real_node[0], "password_file": str(workdir / "pw"), "cluster_name": cluster[0],
        "xmpp_domain": domain, "xmpp_host": "127.0.0.1", "xmpp_port": server.c2s_port, "ca_file": ca,
        "interval": args.interval, "heartbeat_interval": args.interval, "metrics_address": "127.0.0.1",
        "metrics_port": ejabberd_server.free_port(), "scale_systemctl": str(workdir / "systemctl")}))
    exe = Path(sys.executable).parent / "edgelab-node-agent"
    node_proc = subprocess.Popen([str(exe), "--config", str(workdir / "node-agent.yml"), "--log-level", "WARNING"],
                                 stderr=subprocess.DEVNULL)
    idle = subprocess.Popen(["python3", "-c", "import time; time.sleep(600)"])
    await asyncio.sleep(max(20.0, 3 * args.interval))  # warm-up: logins done, first fits
    p_node, p_idle = psutil.Process(node_proc.pid), psutil.Process(idle.pid)
    cpu0 = sum(p_node.cpu_times()[:2])
    rss_samples: list[int] = []

    # Steady window.
    n_dec0 = decisions_seen[0]
    n_real0 = len(real_decisions), len(real_outcomes)
    lat0 = len(agent.latencies)
    transitions0 = sum(s.transitions for s in agent.nodes.values())
    w0 = time.monotonic()
    while time.monotonic() - w0 < args.seconds:
        rss_samples.append(p_node.memory_info().rss)
        await asyncio.sleep(1.0)
    w1 = time.monotonic()
    cpu1 = sum(p_node.cpu_times()[:2])
    idle_rss = p_idle.memory_info().rss
    latencies = list(agent.latencies)[lat0:]
    expected = int(args.seconds // args.interval)
    missed = 0
    for name in [n for n, _ in accounts] + [real_node[0]]:
        got = sum(1 for t in heartbeats.get(name, []) if w0 <= t < w1)
        missed += max(0, expected - got)
    transitions = sum(s.transitions for s in agent.nodes.values()) - transitions0
    n_nodes = len(accounts) + 1
    results: dict[str, Any] = {
        "nodes": len(accounts), "seconds": args.seconds, "interval": args.interval,
        "decisions_recorded": decisions_seen[0] - n_dec0, "actuations": len(latencies),
        "missed_heartbeats": missed, "expected_heartbeats": expected * n_nodes,
        "inactive_transitions": transitions,
        "decision_latency_p50_s": pct(latencies, 50), "decision_latency_p99_s": pct(latencies, 99),
        "load_a": os.getloadavg(),
    }
    print(f"(a) {len(accounts)} nodes + 1 cluster agent, {args.seconds:.0f}s at {args.interval}s: "
          f"missed heartbeats {missed}/{results['expected_heartbeats']}, node state transitions {transitions}, "
          f"{len(latencies)} actuations, decision latency p50 {ms(results['decision_latency_p50_s'])} "
          f"p99 {ms(results['decision_latency_p99_s'])}; {load()}", flush=True)

    rss_max = max(rss_samples)
    cpu_pct = (cpu1 - cpu0) / (w1 - w0) * 100
    results.update({"node_agent_rss_max_bytes": rss_max, "node_agent_cpu_percent": cpu_pct,
                    "idle_python_rss_bytes": idle_rss, "load_c": os.getloadavg()})
    print(f"(c) edgelab-node-agent (online model) over {w1 - w0:.0f}s: RSS max {rss_max / 2**20:.1f} MiB "
          f"(idle python3: {idle_rss / 2**20:.1f} MiB), CPU {cpu_pct:.2f}% of a core; {load()}", flush=True)

    real_dec = real_decisions[n_real0[0]:]
    to_decision = [d["ts"] - d["sample_ts"] for d in real_dec]
    seq_sample = {d["seq"]: d["sample_ts"] for d in real_dec}
    to_applied = [o["ts"] - seq_sample[o["seq"]] for o in real_outcomes[n_real0[1]:]
                  if o["seq"] in seq_sample and o["ok"]]
    results.update({"sample_to_decision_p50_s": pct(to_decision, 50), "sample_to_applied_p50_s": pct(to_applied, 50),
                    "sample_to_applied_max_s": max(to_applied, default=None),
                    "sample_to_applied_n": len(to_applied), "load_d": os.getloadavg()})
    print(f"(d) node-real: telemetry sample -> decision p50 {ms(results['sample_to_decision_p50_s'])} "
          f"({len(to_decision)} decisions), -> scale applied p50 {ms(results['sample_to_applied_p50_s'])} "
          f"({len(to_applied)} actuations); {load()}", flush=True)

    # (b) ejabberd restart.
    _, before_sessions = await ask(conn, "sessions")
    cluster_sessions = agent.link.sessions
    restart = await loop.run_in_executor(None, lambda: server.ctl("restart", check=False))
    down = time.monotonic()
    port_open = loop.run_in_executor(None, _wait_port, server.c2s_port)
    back_logged_in = None
    while time.monotonic() - down < 90:
        _, sessions = await ask(conn, "sessions")
        sims_back = all(a > b for a, b in zip(sessions, before_sessions, strict=True))
        if sims_back and agent.link.sessions > cluster_sessions:
            back_logged_in = time.monotonic() - down
            break
        await asyncio.sleep(0.25)
    back_reporting = None
    while time.monotonic() - down < 90:
        if all(s.last_seen > down for s in agent.nodes.values()):
            back_reporting = time.monotonic() - down
            break
        await asyncio.sleep(0.1)
    opened = await port_open - down
    results.update({"restart_port_open_s": opened, "restart_rc": restart.returncode,
                    "restart_all_logged_in_s": back_logged_in,
                    "restart_all_reporting_s": back_reporting, "load_b": os.getloadavg()})
    print(f"(b) ejabberdctl restart (rc {restart.returncode}), port open again {opened:.1f}s after it returned; "
          f"all {len(accounts) + 2} agents logged in again "
          f"{back_logged_in if back_logged_in is None else round(back_logged_in, 1)}s and all nodes reporting "
          f"{back_reporting if back_reporting is None else round(back_reporting, 1)}s after it returned; {load()}",
          flush=True)

    _, sent, _sim_cpu = await ask(conn, "stop")
    proc.join(15)
    if proc.is_alive():
        proc.kill()
    node_proc.terminate()
    results["node_agent_exit"] = node_proc.wait(15)
    idle.kill()
    agent.stop_event.set()
    await run_task
    results["sim_sent"] = sent
    return results


def _wait_port(port: int) -> float:
    import socket

    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return time.monotonic()
        time.sleep(0.05)


def _ejabberd_ids() -> tuple[int, int]:
    import pwd

    user = pwd.getpwnam("ejabberd")
    return user.pw_uid, user.pw_gid


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}; {load()}", flush=True)
    with ejabberd_server.running_ejabberd() as server, \
            tempfile.TemporaryDirectory(prefix="edgelab-agents-bench-") as tmp:
        results = asyncio.run(bench(args, server, Path(tmp)))
    print("RESULT " + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
