"""edgelab's SRO (Slice Resource Orchestrator, after NECOS): forecasts a service KPI
H seconds ahead from infrastructure metrics. Command line: `edgelab-sro evaluate`
(sro/cli.py)."""
