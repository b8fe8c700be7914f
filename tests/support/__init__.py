"""Test support shared by tests/, benchmarks/ and molecule helpers.

Importable as `support.<module>` because pytest.ini at the repository root puts
tests/ on the path (`pythonpath = tests`); scripts outside pytest (benchmarks) put
tests/ on sys.path themselves, once, before importing from here.

    ejabberd_server  a real ejabberd on loopback (running_ejabberd(), fixture `ejabberd`)
    agenttools       the agents' tests: a handle on that ejabberd, a fake systemctl
    labtools         ansible-playbook from the repository's venv, PLAY RECAP parsing
    tansu            the Tansu broker binary (tansu_binary()) and a broker on loopback
                     (running_tansu(), running_broker(*topics) with its topics made)
    mlflow_server    `mlflow server` on loopback (running_mlflow(); the session fixture
                     `mlflow_server` in tests/conftest.py), unique_name(), register()
    prometheus       Prometheus on loopback with promtool-backfilled history
                     (backfill(), running_prometheus(), the needs_prometheus mark)
"""
