"""The IMA's flavor changes on the receiving side, against a real ejabberd: the IMA's
own actuators (edgelab.ima.actuators) send a scale command to a real cluster agent,
which scales its workers through the node agents (a fake systemctl), and a bandwidth
message to a real node agent, which starts the bandwidth unit whose ExecStart
(edgelab-bandwidth) runs tc (a recording tc here; the real tc in a network namespace
below). Strangers, and peers sending the other's messages, are ignored."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slixmpp
from edgelab import messages
from edgelab.cluster_agent.agent import ClusterAgent
from edgelab.config import PolicyConfig
from edgelab.ima.actuators import XmppSender, apply_bandwidth, apply_consumers
from edgelab.ima.config import Flavor, ImaConfig, SliceSettings, XmppSettings
from edgelab.node_agent import NodeAgent, bandwidth_main, slice_minor, tc_commands
from edgelab.xmpp import tls_context
from support.agenttools import FakeSystemctl, Xmpp
from test_agents_ejabberd import Pair, constant, run, start, stop, until

UNIT = "edgelab-consumer@"


class Ima:
    """The IMA's XMPP account, configured as edgelab-ima would be, for the pair's agents."""

    def __init__(self, xmpp: Xmpp, tag: str, pair: Pair) -> None:
        name = f"ima-{tag}"
        password = xmpp.register(name)
        self.jid = f"{name}@{xmpp.domain}"
        self.cfg = ImaConfig(xmpp=XmppSettings(jid=self.jid, server="127.0.0.1", port=xmpp.port,
                                               ca_file=xmpp.ca_file, password=password,
                                               cluster_agent_jid=f"{pair.cluster_name}@{xmpp.domain}"),
                             slices={"slice-1": SliceSettings(hosts=list(pair.node_names))})

    async def online(self) -> XmppSender:
        """The IMA's sender (made inside the running loop, as the service does), connected."""
        sender = XmppSender(self.cfg)
        sender.link.start()
        await until(sender.link.online.is_set, 20, "the IMA online")
        return sender


def test_ima_scale_command_through_the_cluster_agent(xmpp: Xmpp, systemctl: FakeSystemctl) -> None:
    pair = Pair(xmpp, "imascale", systemctl=systemctl)
    ima = Ima(xmpp, "scale", pair)

    async def scenario() -> None:
        # down_after is large: the policy, wanting 2 for a prediction of 0.5, holds at
        # whatever the IMA set, so the IMA's level stays observable.
        cluster = ClusterAgent(pair.cluster_cfg(ima_jid=ima.jid, policy=PolicyConfig(
            per_instance=0.25, min_instances=1, max_instances=6, down_after=1000)), serve_metrics=False)
        node = NodeAgent(pair.node_cfg(), model=constant(0.5), serve_metrics=False)
        tasks = [await start(cluster), await start(node)]
        sender = await ima.online()
        try:
            await until(lambda: systemctl.active() == [f"{UNIT}{i}.service" for i in (1, 2)], 15,
                        "the policy's own scale-up to 2")
            flavor = Flavor("big", "consumers", {"instances": 5, "unit": UNIT, "timeout": 10.0})
            outcome = await apply_consumers(sender, f"{pair.cluster_name}@{xmpp.domain}", flavor)
            assert outcome.status == "applied", outcome
            assert outcome.detail == f"{pair.cluster_name}: 5 instances"
            assert systemctl.active() == [f"{UNIT}{i}.service" for i in range(1, 6)]
            record = next(d for d in cluster.decisions if d["event"] == "ima_command")
            assert (record["ok"], record["target"], record["workers"], record["instances"]) == \
                (True, 5, [pair.node_names[0]], 5)
            # The policy continues from the IMA's level: it holds at 5 (it would need
            # down_after decisions to go down).
            await until(lambda: cluster.decisions[-1].get("previous") == 5, 5, "a policy decision after it")
            assert cluster.decisions[-1]["action"] == "hold" and cluster.decisions[-1]["target"] == 5
            assert systemctl.active() == [f"{UNIT}{i}.service" for i in range(1, 6)]

            # Outside the policy's min..max: refused, nothing run.
            calls = len(systemctl.calls())
            outcome = await apply_consumers(sender, f"{pair.cluster_name}@{xmpp.domain}",
                                            Flavor("huge", "consumers", {"instances": 7, "unit": UNIT,
                                                                         "timeout": 10.0}))
            assert outcome.status == "failed" and "instances 7 outside the policy's 1..6" in outcome.detail
            outcome = await apply_consumers(sender, f"{pair.cluster_name}@{xmpp.domain}",
                                            Flavor("none", "consumers", {"instances": 0, "unit": UNIT,
                                                                         "timeout": 10.0}))
            assert outcome.status == "failed" and "instances 0 outside the policy's 1..6" in outcome.detail
            # A command older than command_max_age (held in a queue): refused.
            results, silent = await sender.exchange(
                [f"{pair.cluster_name}@{xmpp.domain}"],
                lambda cmd_id: messages.Command(agent="ima", ts=time.time() - 60, seq=99, id=cmd_id,
                                                action="scale", unit=UNIT, instances=3), 10.0)
            assert not silent and len(results) == 1 and not results[0].ok
            assert results[0].error.startswith("stale command: sent 60.")
            assert len([c for c in systemctl.calls()[calls:] if c.startswith(("start", "stop"))]) == 0
            # A unit the node agent does not scale: its refusal comes back to the IMA.
            outcome = await apply_consumers(sender, f"{pair.cluster_name}@{xmpp.domain}",
                                            Flavor("x", "consumers", {"instances": 3, "unit": "ssh@", "timeout": 10.0}))
            assert outcome.status == "failed" and "not this agent's scale_unit" in outcome.detail
            assert systemctl.active() == [f"{UNIT}{i}.service" for i in range(1, 6)]
            # A node agent's command to its cluster agent is not the IMA's: ignored.
            node.link.send(cluster.jid, messages.Command(**node.seq.stamp(), id="from-node", action="scale",
                                                         unit=UNIT, instances=1))
            await asyncio.sleep(1.0)
            assert all(d.get("id") != "from-node" for d in cluster.decisions)
            assert systemctl.active() == [f"{UNIT}{i}.service" for i in range(1, 6)]
        finally:
            await sender.link.stop()
            await stop(node, tasks[1])
            await stop(cluster, tasks[0])

    run(scenario)


def test_ima_scale_without_active_workers_fails_at_once(xmpp: Xmpp, systemctl: FakeSystemctl) -> None:
    pair = Pair(xmpp, "imaidle", systemctl=systemctl)
    ima = Ima(xmpp, "idle", pair)

    async def scenario() -> None:
        cluster = ClusterAgent(pair.cluster_cfg(ima_jid=ima.jid), serve_metrics=False)
        task = await start(cluster)
        sender = await ima.online()
        try:
            began = time.monotonic()
            outcome = await apply_consumers(sender, f"{pair.cluster_name}@{xmpp.domain}",
                                            Flavor("big", "consumers", {"instances": 3, "unit": UNIT, "timeout": 10.0}))
            assert outcome.status == "failed" and "no active worker to scale" in outcome.detail
            assert time.monotonic() - began < 5
            assert systemctl.calls() == []
        finally:
            await sender.link.stop()
            await stop(cluster, task)

    run(scenario)


RECORDING_TC = """#!/bin/sh
# tc stand-in: records each call; "qdisc show" prints the root qdisc of {state}/root.
echo "$*" >> {state}/tc.log
if [ -e {state}/tc.fail ]; then echo "RTNETLINK answers: Operation not permitted" >&2; exit 2; fi
if [ "$1 $2" = "qdisc show" ]; then cat {state}/root 2>/dev/null; fi
exit 0
"""

# systemctl stand-in for the bandwidth unit: "start edgelab-bandwidth@I.service" runs
# what the unit's ExecStart runs (edgelab-bandwidth I) against the recording tc.
UNIT_SYSTEMCTL = """#!/bin/sh
echo "$*" >> {state}/systemctl.log
case "$1 $2" in
  "start edgelab-bandwidth@"*.service)
    i=${{2#edgelab-bandwidth@}}; i=${{i%.service}}
    exec {python} -c "import sys; from edgelab.node_agent import bandwidth_main; sys.exit(bandwidth_main())" \\
      "$i" --interface eth7 --tc {state}/tc ;;
  "is-active "*) for u in "$@"; do [ "$u" = is-active ] || echo inactive; done; exit 3 ;;
esac
echo "unexpected: $*" >&2
exit 1
"""


def executable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_ima_bandwidth_through_the_node_agent(xmpp: Xmpp, tmp_path: Path) -> None:
    pair = Pair(xmpp, "imabw")
    ima = Ima(xmpp, "bw", pair)
    state = tmp_path / "bw"
    state.mkdir()
    executable(state / "tc", RECORDING_TC.format(state=state))
    unit_systemctl = executable(state / "systemctl", UNIT_SYSTEMCTL.format(state=state, python=sys.executable))
    stranger_pw = xmpp.register("stranger-imabw")

    def tc_log() -> list[str]:
        log = state / "tc.log"
        return log.read_text().splitlines() if log.exists() else []

    def starts() -> list[str]:  # the node agent's heartbeats run is-active too
        return [c for c in (state / "systemctl.log").read_text().splitlines() if c.startswith("start")]

    async def scenario() -> None:
        node = NodeAgent(pair.node_cfg(ima_jid=ima.jid, scale_systemctl=unit_systemctl, bandwidth_max_mbit=1000.0),
                         model=constant(0.1), serve_metrics=False)
        task = await start(node)
        sender = await ima.online()
        stranger = slixmpp.ClientXMPP(f"stranger-imabw@{xmpp.domain}/x", stranger_pw,
                                      ssl_context=tls_context(xmpp.ca_file))
        stranger.enable_direct_tls = False
        ready = asyncio.get_running_loop().create_future()
        stranger.add_event_handler("session_start", lambda _e: ready.set_result(True))
        stranger.connect("127.0.0.1", xmpp.port)
        await asyncio.wait_for(ready, 20)
        minor = f"{slice_minor('slice-1'):x}"
        try:
            slow = Flavor("slow-link", "bandwidth", {"rate_mbit": 12.5, "timeout": 15.0})
            outcome = await apply_bandwidth(sender, "slice-1", list(pair.node_names), slow)
            assert outcome.status == "applied", outcome
            assert outcome.targets == [pair.node_names[0]]
            assert starts() == ["start edgelab-bandwidth@slice-1:12500.service"]
            assert tc_log() == ["qdisc show dev eth7 root",
                                f"qdisc replace dev eth7 root handle 1: htb default {minor}",
                                f"class replace dev eth7 parent 1: classid 1:{minor} htb rate 12500kbit ceil 12500kbit"]
            assert node.bandwidth_done == 1

            # Over the node's bandwidth_max_mbit: an error Result, tc never runs.
            before = len(tc_log())
            outcome = await apply_bandwidth(sender, "slice-1", list(pair.node_names),
                                            Flavor("fat", "bandwidth", {"rate_mbit": 5000.0, "timeout": 15.0}))
            assert outcome.status == "failed" and "rate_mbit 5000 outside 0.001..1000" in outcome.detail
            assert len(tc_log()) == before
            # tc refuses: the unit fails, and the IMA hears why.
            (state / "tc.fail").touch()
            outcome = await apply_bandwidth(sender, "slice-1", list(pair.node_names), slow)
            assert outcome.status == "failed"
            assert "systemctl start edgelab-bandwidth@slice-1:12500.service failed" in outcome.detail
            assert "Operation not permitted" in outcome.detail
            (state / "tc.fail").unlink()

            # The cluster agent's account and a stranger send bandwidth: ignored.
            applied = node.bandwidth_done
            foreign = node.link.dropped_foreign
            bad = messages.Bandwidth(agent="x", ts=time.time(), seq=1, id="evil", slice="slice-1", flavor="f",
                                     rate_mbit=1.0)
            stranger.send_message(mto=slixmpp.JID(node.jid), mbody=messages.encode(bad), mtype="chat")
            cluster_link_pw = pair.passwords[pair.cluster_name]
            cluster_client = slixmpp.ClientXMPP(f"{pair.cluster_name}@{xmpp.domain}/x", cluster_link_pw,
                                                ssl_context=tls_context(xmpp.ca_file))
            cluster_client.enable_direct_tls = False
            ready2 = asyncio.get_running_loop().create_future()
            cluster_client.add_event_handler("session_start", lambda _e: ready2.set_result(True))
            cluster_client.connect("127.0.0.1", xmpp.port)
            await asyncio.wait_for(ready2, 20)
            cluster_client.send_message(mto=slixmpp.JID(node.jid), mbody=messages.encode(bad), mtype="chat")
            # The IMA's scale command to a node agent is not the cluster agent's: ignored.
            sender.link.send(node.jid, messages.Command(**sender.seq.stamp(), id="ima-scale", action="scale",
                                                        unit=UNIT, instances=1))
            await until(lambda: node.link.dropped_foreign > foreign, 10, "the stranger's message dropped")
            # A later genuine message is applied: the ones before it were not.
            outcome = await apply_bandwidth(sender, "slice-1", list(pair.node_names),
                                            Flavor("slower", "bandwidth", {"rate_mbit": 2.0, "timeout": 15.0}))
            assert outcome.status == "applied", outcome
            assert node.bandwidth_done == applied + 1 and node.commands_done == 0
            assert starts()[-1] == "start edgelab-bandwidth@slice-1:2000.service"
            assert not any(":1000.service" in c for c in starts())
            cluster_client.disconnect()
        finally:
            stranger.disconnect()
            await sender.link.stop()
            await stop(node, task)

    run(scenario)


def test_bandwidth_refusals_without_running_anything() -> None:
    from edgelab.node_agent import ScaleError, Shaper

    shaper = Shaper("edgelab-bandwidth@", 100.0, "/bin/false")
    assert shaper.unit_for("s1", 0.5) == "edgelab-bandwidth@s1:500.service"
    assert shaper.unit_for("s1", 100.0) == "edgelab-bandwidth@s1:100000.service"
    for slice_id, rate, error in (("s1", 100.5, "outside 0.001..100"), ("s1", 0.0004, "outside 0.001..100"),
                                  ("s1", -1.0, "outside"), ("../x", 1.0, "slice '../x'"), ("", 1.0, "slice ''")):
        with pytest.raises(ScaleError, match=error.replace(".", r"\.")):
            shaper.unit_for(slice_id, rate)


def test_tc_plan_keeps_an_existing_slice_root() -> None:
    minor = f"{slice_minor('s1'):x}"
    fresh = tc_commands("qdisc fq_codel 0: root refcnt 2 limit 10240p\n", "eth0", "s1", 8000)
    assert fresh[0] == ["qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "htb", "default", minor]
    same = tc_commands(f"qdisc htb 1: root refcnt 2 r2q 10 default 0x{minor} direct_packets_stat 0\n",
                       "eth0", "s1", 8000)
    assert same == [["class", "replace", "dev", "eth0", "parent", "1:", "classid", f"1:{minor}", "htb",
                     "rate", "8000kbit", "ceil", "8000kbit"]]
    other = tc_commands("qdisc htb 1: root refcnt 2 r2q 10 default 0x99 direct_packets_stat 0\n", "eth0", "s1", 8)
    assert other[:2] == [["qdisc", "del", "dev", "eth0", "root"],
                         ["qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", minor]]
    assert slice_minor("s1") == slice_minor("s1") != slice_minor("s2")
    assert all(0x10 <= slice_minor(f"slice-{i}") <= 0xffef for i in range(500))


def test_bandwidth_tool_bad_input_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert bandwidth_main(["s1:0", "--interface", "lo", "--tc", "/bin/true"]) == 2
    assert bandwidth_main(["../x:10", "--interface", "lo", "--tc", "/bin/true"]) == 2
    assert bandwidth_main(["s1:10", "--interface", "a b", "--tc", "/bin/true"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["edgelab-bandwidth: bad input: instance 's1:0' is not SLICE:KBIT (a slice id, a rate in kbit/s)",
                   "edgelab-bandwidth: bad input: instance '../x:10' is not SLICE:KBIT (a slice id, a rate in kbit/s)",
                   "edgelab-bandwidth: bad input: --interface 'a b' is not an interface name"]


def _netns_available() -> bool:
    if os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-n", "tc", "qdisc", "show", "dev", "lo"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _netns_available(), reason="needs root and unshare for a private network namespace")
def test_bandwidth_tool_with_the_real_tc_in_a_namespace() -> None:
    """edgelab-bandwidth against the kernel: in a new network namespace, on its lo."""
    code = "import sys; from edgelab.node_agent import bandwidth_main; sys.exit(bandwidth_main())"
    tool = f"{sys.executable} -c '{code}'"
    script = f"""set -e
ip link set lo up
{tool} s1:2500 --interface lo; tc class show dev lo; tc qdisc show dev lo root
{tool} s1:5000 --interface lo; tc class show dev lo
{tool} s2:700 --interface lo; tc class show dev lo; tc qdisc show dev lo root
"""
    done = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, check=False,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    m1, m2 = f"{slice_minor('s1'):x}", f"{slice_minor('s2'):x}"
    assert lines[0].startswith(f"class htb 1:{m1} root prio 0 rate 2500Kbit ceil 2500Kbit")
    assert lines[1].startswith("qdisc htb 1: root") and f"default 0x{m1} " in lines[1]
    assert lines[2].startswith(f"class htb 1:{m1} root prio 0 rate 5Mbit ceil 5Mbit")
    assert lines[3].startswith(f"class htb 1:{m2} root prio 0 rate 700Kbit ceil 700Kbit") and len(lines) == 5
    assert f"default 0x{m2} " in lines[4]
