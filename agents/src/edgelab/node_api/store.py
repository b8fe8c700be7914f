"""The node's model store: production models pulled from MLflow, one directory per
experiment, readable without MLflow once pulled.

    ROOT/<exp_id>/versions/<version>/   an MLflow model directory (MLmodel, ...) plus
                                        edgelab-model.json (name, version, run_id, ...)
    ROOT/<exp_id>/current -> versions/<version>     the model in use
    ROOT/<exp_id>/previous -> versions/<version>    the one before it (rollback)

A pull downloads into a temporary directory beside `versions`, checks that it is a
loadable MLflow model directory (an MLmodel file with a python_function flavor whose
files are all there), renames it into place and then swaps the `current` link with a
rename, so a reader (an inference service, the node agent) sees either the old model
or the new one, never half of one. Versions other than current and previous are
removed after a successful swap. A failed pull leaves the store as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

META = "edgelab-model.json"
EXP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_STORE = "/var/lib/edgelab/models"
PRODUCTION_ALIAS = "production"
PRODUCTION_STAGE = "Production"


class StoreError(Exception):
    """A pull that could not be done; `status` is the HTTP status the node API answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class StoredModel:
    exp_id: str
    name: str
    version: str
    run_id: str
    source: str
    size: int
    path: str
    pulled_at: float
    selected_by: str

    def public(self) -> dict[str, Any]:
        return asdict(self)


def check_exp_id(exp_id: str) -> None:
    if not EXP_ID.match(exp_id):
        raise StoreError(422, f"invalid exp_id {exp_id!r}: use 1-64 letters, digits, '_', '.', '-' "
                              "(it names a directory and a systemd unit instance)")


def check_model_dir(path: Path) -> None:
    """Raise StoreError unless path holds an MLflow model with a python_function flavor."""
    mlmodel = path / "MLmodel"
    try:
        spec = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise StoreError(502, f"downloaded model has no readable MLmodel file: {exc}") from None
    flavors = spec.get("flavors") if isinstance(spec, dict) else None
    pyfunc = flavors.get("python_function") if isinstance(flavors, dict) else None
    if not isinstance(pyfunc, dict):
        raise StoreError(422, "the model has no python_function flavor, so it cannot be served; "
                              "log it with an MLflow flavor that provides one (e.g. mlflow.sklearn)")
    for key in ("model_path", "data"):
        rel = pyfunc.get(key)
        if isinstance(rel, str) and not (path / rel).exists():
            raise StoreError(502, f"downloaded model is incomplete: {rel} named in MLmodel is missing")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class ModelStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def exp_dir(self, exp_id: str) -> Path:
        check_exp_id(exp_id)
        return self.root / exp_id

    def current(self, exp_id: str) -> StoredModel | None:
        """The model in use for exp_id, or None when none was pulled."""
        return self._read(self.exp_dir(exp_id) / "current")

    def previous(self, exp_id: str) -> StoredModel | None:
        return self._read(self.exp_dir(exp_id) / "previous")

    def all(self) -> list[StoredModel]:
        if not self.root.is_dir():
            return []
        found = []
        for entry in sorted(self.root.iterdir()):
            if EXP_ID.match(entry.name):
                model = self._read(entry / "current")
                if model is not None:
                    found.append(model)
        return found

    @staticmethod
    def _read(link: Path) -> StoredModel | None:
        try:
            target = link.resolve(strict=True)
            data = json.loads((target / META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        data["path"] = str(target)
        try:
            return StoredModel(**data)
        except TypeError:
            return None

    def install(self, exp_id: str, staged: Path, meta: dict[str, Any]) -> StoredModel:
        """Move a downloaded, checked model directory into place and make it current."""
        base = self.exp_dir(exp_id)
        versions = base / "versions"
        check_model_dir(staged)
        model = StoredModel(exp_id=exp_id, size=_size(staged), path="", pulled_at=time.time(), **meta)
        record = model.public()
        del record["path"]
        (staged / META).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        final = versions / model.version
        old_current = self._read(base / "current")
        if final.exists():
            if old_current is not None and old_current.version == model.version:
                shutil.rmtree(staged)
                model.path = str(final)
                return model
            shutil.rmtree(final)
        os.rename(staged, final)
        if old_current is not None:
            self._link(base, "previous", Path(old_current.path).name)
        self._link(base, "current", model.version)
        keep = {model.version} | ({Path(old_current.path).name} if old_current else set())
        for entry in versions.iterdir():
            if entry.name not in keep and not entry.name.startswith("."):
                shutil.rmtree(entry, ignore_errors=True)
        model.path = str(final)
        return model

    @staticmethod
    def _link(base: Path, name: str, version: str) -> None:
        tmp = base / f".{name}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(Path("versions") / version)
        os.replace(tmp, base / name)

    def staging(self, exp_id: str) -> Path:
        versions = self.exp_dir(exp_id) / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=".pull-", dir=versions))
        # mkdtemp makes it 0700; the inference services read it through the group the node
        # API runs with (its unit's Group=, the store's group).
        staged.chmod(0o750)
        return staged


def _mlflow_message(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:400]


UNREACHABLE = ("Connection refused", "Failed to establish a new connection", "Max retries exceeded",
               "timed out", "Name or service not known", "No route to host")


def mlflow_failure(uri: str, exc: Exception) -> StoreError:
    """One clear StoreError (502) for an exception from MLflow's client."""
    text = " ".join(str(exc).split())
    reason = next((r for r in UNREACHABLE if r in text), None)
    if reason is not None:
        return StoreError(502, f"cannot reach MLflow at {uri} ({reason.lower()}): check the node API's "
                               "mlflow_tracking_uri and that MLflow runs; the store is unchanged")
    if "401" in text or "403" in text or "Unauthorized" in text or "PERMISSION_DENIED" in text:
        return StoreError(502, f"MLflow at {uri} refused the node API's account: check mlflow_username, "
                               "its password file and the account's permission on the model")
    return StoreError(502, f"MLflow at {uri} failed: {text[:400]}")


class MlflowPuller:
    """Resolves an experiment's production model in an MLflow registry and downloads it.

    The registered model is the one named in `names` for exp_id, else exp_id itself.
    Production is the alias `production`; without it, the legacy stage `Production`."""

    def __init__(self, store: ModelStore, tracking_uri: str, names: dict[str, str] | None = None) -> None:
        self.store = store
        self.tracking_uri = tracking_uri
        self.names = dict(names or {})

    def _client(self) -> Any:
        try:
            from mlflow.tracking import MlflowClient  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise StoreError(500, "mlflow is not installed: pip install 'edgelab-agents[nodeapi]'") from None
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def resolve(self, exp_id: str, name: str | None = None) -> tuple[Any, str]:
        """(model version object, how it was selected); StoreError when there is none."""
        from mlflow.exceptions import MlflowException  # type: ignore[import-not-found, unused-ignore]

        name = name or self.names.get(exp_id, exp_id)
        client = self._client()
        try:
            client.get_registered_model(name)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                raise StoreError(404, f"unknown exp_id {exp_id!r}: MLflow at {self.tracking_uri} has no "
                                      f"registered model {name!r}; register one under that name or map "
                                      "the exp_id to a model name in the node API's config (models:)") from None
            raise mlflow_failure(self.tracking_uri, exc) from None
        except Exception as exc:  # connection errors may arrive as requests/urllib3 exceptions
            raise mlflow_failure(self.tracking_uri, exc) from None
        try:
            return client.get_model_version_by_alias(name, PRODUCTION_ALIAS), f"alias {PRODUCTION_ALIAS}"
        except MlflowException as exc:
            if getattr(exc, "error_code", "") not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise mlflow_failure(self.tracking_uri, exc) from None
        except Exception as exc:
            raise mlflow_failure(self.tracking_uri, exc) from None
        try:
            versions = client.search_model_versions(f"name='{name}'")
        except Exception as exc:
            raise mlflow_failure(self.tracking_uri, exc) from None
        staged = [v for v in versions if getattr(v, "current_stage", "") == PRODUCTION_STAGE]
        if not staged:
            raise StoreError(404, f"registered model {name!r} (exp_id {exp_id!r}) has no production version: "
                                  f"set the alias '{PRODUCTION_ALIAS}' on the version to serve "
                                  f"(or the legacy stage '{PRODUCTION_STAGE}')")
        best = max(staged, key=lambda v: int(v.version))
        return best, f"stage {PRODUCTION_STAGE}"

    def pull(self, exp_id: str, name: str | None = None) -> StoredModel:
        check_exp_id(exp_id)
        version, selected_by = self.resolve(exp_id, name)
        current = self.store.current(exp_id)
        if current is not None and current.name == version.name and current.version == str(version.version):
            return current
        staged = self.store.staging(exp_id)
        try:
            import mlflow.artifacts  # type: ignore[import-not-found, unused-ignore]

            try:
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{version.name}/{version.version}", dst_path=str(staged),
                    tracking_uri=self.tracking_uri)
            except Exception as exc:
                raise StoreError(502, f"downloading {version.name} version {version.version} from MLflow at "
                                      f"{self.tracking_uri} failed: {_mlflow_message(exc)}; "
                                      "the previous model is unchanged") from None
            meta = {"name": version.name, "version": str(version.version), "run_id": version.run_id or "",
                    "source": str(version.source or ""), "selected_by": selected_by}
            return self.store.install(exp_id, staged, meta)
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)
