"""What the IMA keeps across restarts, as JSON files in state_dir, each written
through a temporary file and renamed (edgelab.cli.write_atomic): a reader or a
restart never sees half a file.

    state_dir/selections/<sliceId>/<flavorId>.json   one selection
    state_dir/actions/<sliceId>.json                 the slice's last MAX_ACTIONS flavor changes
    state_dir/streams.json                           {sliceId: flavorId} streaming now

Slice and flavor ids are checked (config.check_name) before they name a file.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from ..cli import write_atomic

log = logging.getLogger(__name__)

MAX_ACTIONS = 1000


class StateStore:
    def __init__(self, state_dir: str | None) -> None:
        """state_dir None: kept in memory only (a restart forgets it)."""
        self.root = Path(state_dir) if state_dir else None
        self.lock = threading.Lock()
        self.selections: dict[tuple[str, str], dict[str, Any]] = {}
        self.actions: dict[str, list[dict[str, Any]]] = {}
        self.streams: dict[str, str] = {}
        if self.root is not None:
            for sub in ("selections", "actions"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            self._load(self.root)

    def _write(self, relative: str, data: Any) -> None:
        if self.root is not None:
            path = self.root / relative
            path.parent.mkdir(exist_ok=True)
            write_atomic(str(path), json.dumps(data, indent=1, allow_nan=False) + "\n")

    def _read(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("state file %s skipped: %s", path, exc)
            return None

    def _load(self, root: Path) -> None:
        for path in sorted((root / "selections").glob("*/*.json")):
            item = self._read(path)
            if isinstance(item, dict) and item.get("sliceId") == path.parent.name \
                    and item.get("sliceFlavor") == path.stem:
                self.selections[(path.parent.name, path.stem)] = item
        for path in sorted((root / "actions").glob("*.json")):
            items = self._read(path)
            if isinstance(items, list):
                self.actions[path.stem] = items[-MAX_ACTIONS:]
        streams = self._read(root / "streams.json") if (root / "streams.json").exists() else None
        if isinstance(streams, dict):
            self.streams = {str(k): str(v) for k, v in streams.items() if (str(k), str(v)) in self.selections}
        log.info("state %s: %d selections, %d slices with actions, %d streams", root, len(self.selections),
                 len(self.actions), len(self.streams))

    # ------------------------------------------------------------ selections
    def put_selection(self, item: dict[str, Any]) -> None:
        slice_id, flavor = item["sliceId"], item["sliceFlavor"]
        with self.lock:
            self._write(f"selections/{slice_id}/{flavor}.json", item)
            self.selections[(slice_id, flavor)] = item

    def selection(self, slice_id: str, flavor: str) -> dict[str, Any] | None:
        with self.lock:
            return self.selections.get((slice_id, flavor))

    def flavors(self, slice_id: str) -> list[str]:
        with self.lock:
            return sorted(f for s, f in self.selections if s == slice_id)

    def latest(self, slice_id: str) -> dict[str, Any] | None:
        """The slice's most recent selection (any flavor)."""
        with self.lock:
            items = [v for (s, _f), v in self.selections.items() if s == slice_id]
        return max(items, key=lambda v: float(v.get("created", 0))) if items else None

    # ------------------------------------------------------------ actions
    def add_action(self, slice_id: str, record: dict[str, Any]) -> None:
        with self.lock:
            items = [*self.actions.get(slice_id, []), record][-MAX_ACTIONS:]
            self._write(f"actions/{slice_id}.json", items)
            self.actions[slice_id] = items

    def slice_actions(self, slice_id: str) -> list[dict[str, Any]] | None:
        with self.lock:
            items = self.actions.get(slice_id)
            return list(items) if items is not None else None

    # ------------------------------------------------------------ streams
    def set_stream(self, slice_id: str, flavor: str | None) -> None:
        with self.lock:
            streams = dict(self.streams)
            if flavor is None:
                streams.pop(slice_id, None)
            else:
                streams[slice_id] = flavor
            self._write("streams.json", streams)
            self.streams = streams
