"""No-cluster mode: CR YAML files in a directory, followed by polling, as a watch event stream.

The directory yields the same :class:`ResourceEvent` stream a Kubernetes watch would, so the
receivers view is built by one code path whatever the source. A file that fails to parse
keeps its last good objects and is reported with its path, document and field or line.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nmstream.config.events import TYPES_BY_KIND, EventType, ResourceEvent

log = logging.getLogger(__name__)

Emit = Callable[[ResourceEvent], Awaitable[None]]


class DocumentError(ValueError):
    """A document that is not a usable object; the message names the field."""


def _apiserver_secret(obj: dict[str, Any]) -> dict[str, Any]:
    """Merge ``stringData`` into base64 ``data`` and drop it, as the apiserver does."""
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = dict(obj.get("data") or {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data
    return obj


def _objects(doc: Any, index: int) -> Iterator[dict[str, Any]]:
    """The objects of one YAML document (a ``List`` is expanded like kubectl does)."""
    if not isinstance(doc, dict):
        raise DocumentError(f"document {index}: not a mapping")
    if doc.get("kind") == "List":
        items = doc.get("items")
        if not isinstance(items, list):
            raise DocumentError(f"document {index}: items must be a list")
        for item in items:
            yield from _objects(item, index)
        return
    for name in ("apiVersion", "kind"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            raise DocumentError(f"document {index}: {name} is required")
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        raise DocumentError(f"document {index}: metadata must be a mapping")
    if not isinstance(metadata.get("name"), str) or not metadata["name"]:
        raise DocumentError(f"document {index}: metadata.name is required")
    if "labels" in metadata and not isinstance(metadata["labels"], dict | None):
        raise DocumentError(f"document {index}: metadata.labels must be a mapping")
    yield doc


def read_file(path: Path) -> dict[str, dict[str, Any]]:
    """Objects of the kinds nmstream follows in one file, by event key; raises on problems."""
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        raise DocumentError(f"YAML error at {where}: {exc.problem}") from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DocumentError(str(exc)) from exc
    found: dict[str, dict[str, Any]] = {}
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        for obj in _objects(doc, index):
            rtype = TYPES_BY_KIND.get(obj["kind"])
            if rtype is None:
                log.debug("%s document %d: kind %s is not followed", path, index, obj["kind"])
                continue
            obj = copy.deepcopy(obj)
            if rtype.namespaced:
                obj["metadata"].setdefault("namespace", "default")
            else:
                obj["metadata"].pop("namespace", None)
            if rtype.kind == "Secret":
                obj = _apiserver_secret(obj)
            meta = obj["metadata"]
            event = ResourceEvent("ADDED", rtype.kind, meta["name"], meta.get("namespace"))
            found[event.key] = obj
    return found


@dataclass
class _FileState:
    signature: tuple[int, int]
    digest: str
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)


class DirectorySource:
    """Follows ``*.yaml``/``*.yml`` under a directory and emits the changes."""

    def __init__(self, path: Path, emit: Emit, *, poll_interval: float = 1.0) -> None:
        self.path = path
        self.emit = emit
        self.poll_interval = poll_interval
        self.synced = asyncio.Event()
        self._parse_problems: dict[str, str] = {}
        self._duplicates: dict[str, list[str]] = {}
        self._files: dict[Path, _FileState] = {}
        self._current: dict[str, dict[str, Any]] = {}
        self._version = 0
        self._stopping = asyncio.Event()

    @property
    def problems(self) -> dict[str, list[str]]:
        """Files with problems (unparsable, or redefining another file's object) → messages."""
        merged = {path: [message] for path, message in self._parse_problems.items()}
        for path, messages in self._duplicates.items():
            merged.setdefault(path, []).extend(messages)
        return merged

    def _files_now(self) -> list[Path]:
        return sorted(
            p
            for pattern in ("*.yaml", "*.yml")
            for p in self.path.rglob(pattern)
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(
                self.path).parts)
        )

    def _reread(self) -> bool:
        """Refresh the per-file state; True when anything changed. Runs in a thread."""
        changed = False
        present = set()
        for path in self._files_now():
            present.add(path)
            stat = path.stat()
            signature = (stat.st_mtime_ns, stat.st_size)
            state = self._files.get(path)
            if state is not None and state.signature == signature:
                continue
            raw = path.read_bytes()
            digest = hashlib.sha256(raw).hexdigest()
            if state is not None and state.digest == digest:
                state.signature = signature
                continue
            changed = True
            try:
                objects = read_file(path)
            except DocumentError as exc:
                message = f"{path}: {exc}"
                self._parse_problems[str(path)] = message
                log.warning("configuration file %s", message)
                kept = state.objects if state is not None else {}
                self._files[path] = _FileState(signature, digest, kept)
                continue
            self._parse_problems.pop(str(path), None)
            self._files[path] = _FileState(signature, digest, objects)
        for gone in set(self._files) - present:
            del self._files[gone]
            self._parse_problems.pop(str(gone), None)
            changed = True
        return changed

    def _merged(self) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        owner: dict[str, Path] = {}
        self._duplicates = {}
        for path in sorted(self._files):
            for key, obj in self._files[path].objects.items():
                if key in owner:
                    message = f"{path}: {key} also defined in {owner[key]}; this file wins"
                    self._duplicates.setdefault(str(path), []).append(message)
                    log.warning("configuration file %s", message)
                merged[key], owner[key] = obj, path
        return merged

    async def scan(self) -> None:
        """Read the directory once and emit what changed since the last scan."""
        if not await asyncio.to_thread(self._reread):
            return
        merged = self._merged()
        for key, obj in merged.items():
            old = self._current.get(key)
            if old is not None and _without_version(old) == obj:
                merged[key] = old
                continue
            self._version += 1
            versioned = copy.deepcopy(obj)
            versioned["metadata"]["resourceVersion"] = str(self._version)
            merged[key] = versioned
            kind, namespace, name = key.split("/", 2)
            event_type: EventType = "MODIFIED" if old is not None else "ADDED"
            await self.emit(ResourceEvent(event_type, kind, name, namespace or None, versioned))
        for key in self._current.keys() - merged.keys():
            kind, namespace, name = key.split("/", 2)
            await self.emit(
                ResourceEvent("DELETED", kind, name, namespace or None, self._current[key])
            )
        self._current = merged

    async def run(self) -> None:
        """Scan at once, set ``synced``, then poll until stopped."""
        if not self.path.is_dir():
            raise FileNotFoundError(f"configuration directory {self.path} does not exist")
        self._stopping.clear()
        while not self._stopping.is_set():
            try:
                await self.scan()
            except OSError as exc:
                log.warning("cannot read configuration directory %s: %s", self.path, exc)
            self.synced.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.poll_interval)

    async def stop(self) -> None:
        """Stop polling."""
        self._stopping.set()


def _without_version(obj: dict[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(obj)
    stripped["metadata"].pop("resourceVersion", None)
    return stripped
