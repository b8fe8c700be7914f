"""edgelab cluster agent (entry point edgelab-cluster-agent: agent.main).

    agent      the agent: node states from heartbeats, decisions, actuation, events
    policy     prediction -> target instance count (pluggable)
    actuators  target -> action: an XMPP command to the node agent, or a Deployment scale
"""
