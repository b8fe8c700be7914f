"""edgelab's SRO (Slice Resource Orchestrator, after NECOS): forecasts a service KPI
H seconds ahead from infrastructure metrics and acts on the forecast. Command line
`edgelab-sro evaluate` (sro/cli.py); the service `edgelab-sro serve` (sro/service.py:
profiling through the IMA, sro/stream.py: the live forecast over Kafka,
sro/orchestrate.py: flavor changes with hysteresis; settings in sro/config.py)."""
