"""edgelab's IMA (Infrastructure Monitoring Abstraction, after NECOS): picks the K
infrastructure metrics that best explain a service KPI. Command line:
`edgelab-ima select` (ima/cli.py); HTTP service with streaming to Kafka and flavor
changes: `edgelab-ima serve --config /etc/edgelab/ima.yml` (ima/service.py).
"""
