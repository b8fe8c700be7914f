"""The node API side of the mlflow drill (playbooks/drills/mlflow.yml), run on a worker
with the node API's own Python (it has MLflow's client and scikit-learn), reading the
node API's settings and token from /etc/edgelab/node-api:

    python - prepare             register version A of model EXP (alias production),
                                 PUT it, deploy it, predict; then register version B
                                 and move the alias to it (not pulled yet)
    python - pull PORT DEADLINE  while MLflow is down or restarting: PUT EXP every
                                 second until one answers 200 or DEADLINE (epoch s),
                                 the store's current version read after each failed
                                 PUT, and the inference service on PORT asked five
                                 times a second all along
    python - cleanup             undeploy EXP and delete its registered model

Each phase prints one JSON line.
"""

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

EXP = "edgelab-drill"
BASE = "/etc/edgelab/node-api"
STORE = Path("/var/lib/edgelab/models") / EXP


def settings():
    import yaml

    conf = yaml.safe_load(Path(BASE, "node-api.yml").read_text(encoding="utf-8"))
    os.environ["MLFLOW_TRACKING_URI"] = conf["mlflow_tracking_uri"]
    if conf.get("mlflow_username"):
        os.environ["MLFLOW_TRACKING_USERNAME"] = conf["mlflow_username"]
        os.environ["MLFLOW_TRACKING_PASSWORD"] = Path(conf["mlflow_password_file"]).read_text(encoding="utf-8").strip()
    token = Path(BASE, "token").read_text(encoding="utf-8").strip()
    return "http://127.0.0.1:" + conf["listen"].rpartition(":")[2], token


def call(method, url, token=None, body=None, timeout=60):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except ValueError:
            return exc.code, {"detail": raw.decode("utf-8", "replace")[:300]}


def register(slope):
    import mlflow
    import numpy as np
    from mlflow.tracking import MlflowClient
    from sklearn.linear_model import LinearRegression

    mlflow.set_experiment(EXP)
    x = np.random.default_rng(1).random((40, 3))
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(LinearRegression().fit(x, slope * x[:, -1]), name="model",
                                        registered_model_name=EXP, input_example=np.zeros((1, 3)))
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(EXP, "production", version)
    return version


def current():
    link = STORE / "current"
    return os.path.basename(os.path.realpath(link)) if link.exists() else None


def prepare():
    api, token = settings()
    first = register(1.0)
    put = call("PUT", api + "/api/mlflow/model", token, {"exp_id": EXP})
    deploy = call("POST", api + "/api/inference/deploy", token, {"exp_id": EXP})
    if deploy[0] == 409:  # deployed by an earlier drill: find its port
        listed = call("GET", api + "/api/inference/all", token)[1]
        port = next(d["port"] for d in listed if d["exp_id"] == EXP)
    else:
        port = deploy[1].get("port") if isinstance(deploy[1], dict) else None
    deadline = time.time() + 60
    predict = (0, None)
    while port and time.time() < deadline:
        predict = call("POST", "http://127.0.0.1:%s/predict" % port, body=[[0, 0, 0.5]], timeout=10)
        if predict[0] == 200 and predict[1].get("version") == first:
            break
        time.sleep(0.5)
    second = register(2.0)
    return {"first": first, "second": second, "put": put[0], "deploy": deploy[0], "port": port,
            "served": predict[1].get("version") if predict[0] == 200 else None, "store": current()}


def pull(port, deadline):
    api, token = settings()
    stop = threading.Event()
    versions, failures = [], []

    def ask():
        while not stop.is_set():
            try:
                code, body = call("POST", "http://127.0.0.1:%s/predict" % port, body=[[0, 0, 1.0]], timeout=10)
            except OSError as exc:
                failures.append(repr(exc)[:200])
            else:
                if code == 200:
                    versions.append(body["version"])
                else:
                    failures.append("%s %s" % (code, str(body)[:200]))
            time.sleep(0.2)

    asker = threading.Thread(target=ask)
    asker.start()
    attempts, store_during_failures, success = [], set(), None
    try:
        while time.time() < deadline:
            started = time.time()
            try:
                code, body = call("PUT", api + "/api/mlflow/model", token, {"exp_id": EXP}, timeout=60)
            except OSError as exc:
                code, body = 0, {"detail": repr(exc)}
            attempts.append({"t": round(started, 3), "seconds": round(time.time() - started, 2), "code": code,
                             "detail": str(body.get("detail", "") if isinstance(body, dict) else body)[:200]})
            if code == 200:
                service = body.get("service") if isinstance(body.get("service"), dict) else {}
                success = {"t": round(time.time(), 3), "version": body.get("version"),
                           "previous_version": body.get("previous_version"), "switched": service.get("switched")}
                break
            store_during_failures.add(current())
            time.sleep(max(0.0, 1.0 - (time.time() - started)))
        time.sleep(2)
    finally:
        stop.set()
        asker.join()
    failed = [a for a in attempts if a["code"] != 200]
    return {"attempts": len(attempts), "failed_attempts": len(failed),
            "failed_codes": sorted({a["code"] for a in failed}), "first_failure": failed[0] if failed else None,
            "success": success, "store_during_failures": sorted(v for v in store_during_failures if v),
            "predictions": len(versions), "prediction_failures": len(failures), "first_prediction_failure":
            failures[0] if failures else None, "versions_served": sorted(set(versions)), "store_after": current()}


def cleanup():
    api, token = settings()
    from mlflow.tracking import MlflowClient

    undeploy = call("DELETE", api + "/api/inference/deploy?exp_id=" + EXP, token)
    try:
        MlflowClient().delete_registered_model(EXP)
        deleted = True
    except Exception as exc:  # reported in the drill's results; the drill goes on
        deleted = repr(exc)[:200]
    return {"undeploy": undeploy[0], "model_deleted": deleted}


def main():
    phase = sys.argv[1] if len(sys.argv) > 1 else ""
    if phase == "prepare":
        out = prepare()
    elif phase == "pull" and len(sys.argv) == 4:
        out = pull(int(sys.argv[2]), float(sys.argv[3]))
    elif phase == "cleanup":
        out = cleanup()
    else:
        print("edgelab-drill-mlflow: bad input: phases: prepare | pull PORT DEADLINE | cleanup", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
