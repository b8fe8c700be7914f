"""edgelab's IMA (Infrastructure Monitoring Abstraction, after NECOS): picks the K
infrastructure metrics that best explain a service KPI. Command line:
`edgelab-ima select` (ima/cli.py)."""
