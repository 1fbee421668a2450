"""Parser scripts by reference: where they come from and which version is current.

A reference (``parser_script_ref``) is a file name such as ``efento_parser.py``; the
``.py`` may be left out. It is looked up, first match wins, in

1. the scripts the device's organisation uploaded (``PUT /api/parsers/{ref}``,
   ``fleetcloud parser upload FILE``), kept in the database;
2. the configured directory (``--parsers-dir`` / ``FLEETCLOUD_PARSERS_DIR``);
3. the scripts fleetcloud ships (``fleetcloud/commands/parsers/``).

A script is identified by the SHA-256 of its source; the parser runner caches compiled
scripts by that hash, so a new upload (a new hash) takes effect for the next command and
an unchanged script is never loaded twice.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetcloud.core.errors import BadRequest, NotFound, PayloadTooLarge, ValidationFailed
from fleetcloud.store.agents import now_ms
from fleetcloud.store.base import Store
from fleetcloud.store.ops import Execute, Fetch, Work, placeholders

BUILTIN_DIR = Path(__file__).parent / "parsers"
REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,124}\.py$")
MAX_SOURCE_BYTES = 256 * 1024
PARSERS_DIR_ENV = "FLEETCLOUD_PARSERS_DIR"
LOOKUP_TTL = 1.0  # seconds another process's upload may take to be seen

_generation = [0]  # bumped by every upload or delete in this process


def _changed() -> None:
    _generation[0] += 1


class UnknownParser(NotFound):
    """No script has this reference (for a command: it fails with this reason)."""


@dataclass(frozen=True, slots=True)
class Script:
    ref: str
    sha256: str
    source: str
    origin: str  # "upload" | "directory" | "builtin"
    version: int = 1
    updated_ms: int | None = None

    def to_json(self, *, with_source: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ref": self.ref,
            "sha256": self.sha256,
            "size": len(self.source.encode()),
            "origin": self.origin,
            "version": self.version,
            "updated_ms": self.updated_ms,
        }
        if with_source:
            body["source"] = self.source
        return body


def normalise_ref(ref: str) -> str:
    """``name`` or ``name.py`` → ``name.py``; refuses anything that is not a plain file
    name (no directories, no ``..``)."""
    name = ref.strip()
    if not name.endswith(".py"):
        name += ".py"
    if not REF.match(name) or ".." in name:
        raise BadRequest(
            f"{ref!r} is not a parser script reference: use a file name like 'my_parser.py'"
        )
    return name


def digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def check_source(raw: bytes, ref: str) -> str:
    """The uploaded bytes as source text, if they are a Python module (compiled, never run)."""
    if len(raw) > MAX_SOURCE_BYTES:
        raise PayloadTooLarge(f"a parser script may be at most {MAX_SOURCE_BYTES} bytes")
    try:
        source = raw.decode()
    except UnicodeDecodeError as exc:
        raise ValidationFailed(f"{ref} is not UTF-8 text: {exc}") from exc
    try:
        code = compile(source, ref, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        raise ValidationFailed(f"{ref} is not valid Python: {exc}") from exc
    if "format_command" not in code.co_names and "parse" not in code.co_names:
        raise ValidationFailed(f"{ref} defines neither format_command nor parse")
    return source


# ---------------------------------------------------------------- uploaded scripts


def _script(row: tuple[Any, ...]) -> Script:
    ref, sha, source, version, updated = row
    return Script(str(ref), str(sha), str(source), "upload", int(version), int(updated))


def put_script(organisation_id: int, ref: str, source: str, author_id: int) -> Work[Script]:
    """Create or replace an organisation's script; each upload bumps its version."""
    sha = digest(source)
    at = now_ms()
    _changed()
    changed = yield Execute(
        "UPDATE command_parsers SET sha256 = ?, source = ?, version = version + 1, "
        "author_id = ?, updated_ms = ? WHERE organisation_id = ? AND ref = ?",
        (sha, source, author_id, at, organisation_id, ref),
    )
    if not changed:
        yield Execute(
            "INSERT INTO command_parsers (organisation_id, ref, sha256, source, version, "
            "author_id, updated_ms) VALUES (?, ?, ?, ?, 1, ?, ?)",
            (organisation_id, ref, sha, source, author_id, at),
        )
    script = yield from get_uploaded(organisation_id, ref)
    if script is None:  # written just above, in this transaction
        raise NotFound(f"parser script {ref!r} vanished while it was written")
    return script


def get_uploaded(organisation_id: int, ref: str) -> Work[Script | None]:
    rows = yield Fetch(
        "SELECT ref, sha256, source, version, updated_ms FROM command_parsers "
        "WHERE organisation_id = ? AND ref = ?",
        (organisation_id, ref),
    )
    return _script(rows[0]) if rows else None


def list_uploaded(organisation_id: int) -> Work[list[Script]]:
    rows = yield Fetch(
        "SELECT ref, sha256, source, version, updated_ms FROM command_parsers "
        "WHERE organisation_id = ? ORDER BY ref",
        (organisation_id,),
    )
    return [_script(row) for row in rows]


def uploaded_hashes(organisation_id: int, refs: Iterable[str]) -> Work[dict[str, str]]:
    wanted = sorted(set(refs))
    if not wanted:
        return {}
    rows = yield Fetch(
        "SELECT ref, sha256 FROM command_parsers WHERE organisation_id = ? "  # noqa: S608 - constant columns, "?" placeholders
        f"AND ref IN ({placeholders(len(wanted))})",
        (organisation_id, *wanted),
    )
    return {str(ref): str(sha) for ref, sha in rows}


def delete_script(organisation_id: int, ref: str) -> Work[bool]:
    _changed()
    count = yield Execute(
        "DELETE FROM command_parsers WHERE organisation_id = ? AND ref = ?",
        (organisation_id, ref),
    )
    return bool(count)


# ---------------------------------------------------------------- the library


class ParserLibrary:
    """Resolves references to scripts for an organisation (see the module docstring)."""

    def __init__(self, store: Store, directory: str | Path | None = None) -> None:
        self.store = store
        configured = directory if directory is not None else os.environ.get(PARSERS_DIR_ENV)
        self.directory = Path(configured) if configured else None
        self._files: dict[Path, tuple[tuple[int, int], Script]] = {}
        self._found: dict[str, tuple[float, Script]] = {}  # ref -> (until, file script)
        self._sources: dict[str, str] = {}  # sha256 -> source, for uploaded scripts
        self._hashes: dict[tuple[int, str], tuple[float, str | None]] = {}
        self._resolved: dict[tuple[int | None, str], tuple[float, Script]] = {}
        self._generation = _generation[0]

    async def resolve(self, organisation_id: int | None, ref: str) -> Script:
        """The current script for ``ref``; raises ``UnknownParser`` (or ``BadRequest`` for
        a malformed reference)."""
        key = (organisation_id, ref)
        cached = self._resolved.get(key)
        if cached is not None and cached[0] > time.monotonic() and self._current():
            return cached[1]
        found = await self.resolve_many(organisation_id, [ref])
        result = found[ref]
        if isinstance(result, Exception):
            raise result
        if len(self._resolved) > 10_000:
            self._resolved.clear()
        self._resolved[key] = (time.monotonic() + LOOKUP_TTL, result)
        return result

    def _current(self) -> bool:
        """False (and the caches emptied) if this process took an upload since."""
        if self._generation == _generation[0]:
            return True
        self._hashes.clear()
        self._resolved.clear()
        self._generation = _generation[0]
        return False

    async def resolve_many(
        self, organisation_id: int | None, refs: Iterable[str]
    ) -> dict[str, Script | Exception]:
        """Resolve several references with one database read."""
        names: dict[str, str | Exception] = {}
        for ref in set(refs):
            try:
                names[ref] = normalise_ref(ref)
            except BadRequest as exc:
                names[ref] = exc
        valid = {name for name in names.values() if isinstance(name, str)}
        hashes = await self._uploaded_hashes(organisation_id, valid) if valid else {}
        results: dict[str, Script | Exception] = {}
        for ref, name in names.items():
            if isinstance(name, Exception):
                results[ref] = name
            elif name in hashes:
                results[ref] = await self._uploaded(organisation_id, name, hashes[name])
            else:
                results[ref] = self._from_files(name)
        return results

    async def _uploaded_hashes(self, organisation_id: int | None, refs: set[str]) -> dict[str, str]:
        """Which of ``refs`` the organisation uploaded, and their hashes: read again after
        any upload in this process, and at least every ``LOOKUP_TTL`` seconds."""
        if organisation_id is None:
            return {}
        if not self._current() or len(self._hashes) > 10_000:
            self._hashes.clear()
        now = time.monotonic()
        fresh = {r for r in refs if self._hashes.get((organisation_id, r), (0.0, None))[0] > now}
        stale = refs - fresh
        if stale:
            found = await self.store.read(uploaded_hashes(organisation_id, stale))
            for ref in stale:
                self._hashes[(organisation_id, ref)] = (now + LOOKUP_TTL, found.get(ref))
        cached = {r: self._hashes[(organisation_id, r)][1] for r in refs}
        return {ref: sha for ref, sha in cached.items() if sha is not None}

    async def _uploaded(self, organisation_id: int | None, ref: str, sha: str) -> Script:
        source = self._sources.get(sha)
        if source is None and organisation_id is not None:
            script = await self.store.read(get_uploaded(organisation_id, ref))
            if script is None:  # deleted meanwhile
                return self._from_files(ref)
            if len(self._sources) > 1024:
                self._sources.clear()
            self._sources[script.sha256] = source = script.source
            sha = script.sha256
        return Script(ref, sha, source or "", "upload")

    def _from_files(self, ref: str) -> Script:
        """The directory's or the shipped script (looked up at most every LOOKUP_TTL)."""
        now = time.monotonic()
        cached = self._found.get(ref)
        if cached is not None and cached[0] > now:
            return cached[1]
        for directory, origin in ((self.directory, "directory"), (BUILTIN_DIR, "builtin")):
            if directory is None:
                continue
            script = self._file(directory / ref, ref, origin)
            if script is not None:
                if len(self._found) > 10_000:
                    self._found.clear()
                self._found[ref] = (now + LOOKUP_TTL, script)
                return script
        raise UnknownParser(f"unknown parser script {ref!r}")

    def _file(self, path: Path, ref: str, origin: str) -> Script | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._files.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            source = path.read_text()
        except (OSError, UnicodeDecodeError):
            return None
        script = Script(ref, digest(source), source, origin, 1, stat.st_mtime_ns // 1_000_000)
        self._files[path] = (stamp, script)
        return script

    def files(self) -> list[Script]:
        """The directory's and the shipped scripts (a directory script hides a shipped
        one of the same name)."""
        found: dict[str, Script] = {}
        for directory, origin in ((BUILTIN_DIR, "builtin"), (self.directory, "directory")):
            if directory is None or not directory.is_dir():
                continue
            for path in sorted(directory.glob("*.py")):
                if path.name.startswith("_") or not REF.match(path.name):
                    continue
                script = self._file(path, path.name, origin)
                if script is not None:
                    found[path.name] = script
        return list(found.values())

    async def available(self, organisation_id: int) -> list[Script]:
        """Every script ``organisation_id`` can use, uploads hiding files of the same name."""
        uploaded = await self.store.read(list_uploaded(organisation_id))
        by_ref = {script.ref: script for script in self.files()}
        by_ref.update((script.ref, script) for script in uploaded)
        return [by_ref[ref] for ref in sorted(by_ref)]
