"""Artifacts: a stage's output directory and its manifest (`artifact.json`).

The manifest is written last and atomically: a directory without a complete manifest is not an
artifact. A stage works in `<run_dir>/<name>.partial/` and only a finished stage is moved to
`<run_dir>/<name>/`, so a failed or interrupted run never overwrites a finished artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from align.errors import AlignError

MANIFEST = "artifact.json"
PROGRESS = "progress.json"
FORMAT_VERSION = 1
# Manifests from commits that record `checksums` (format 2): a reader checks every file named
# and recorded. Manifests of format 1 (older runs, hand-made ones) carry nothing to check against.
CHECKED_FORMAT = 2


@dataclass
class ModelRef:
    """What model an artifact holds.

    `type` is "full" (weights in `path`) or "adapter" (a PEFT adapter in `path` on top of
    `base`, itself a directory of full weights or a Hub id). `root` is the model the whole
    lineage started from, for model cards.
    """

    type: str
    path: str
    base: str | None = None
    root: str | None = None
    method: str = "full"
    task: str = "causal-lm"  # or "sequence-classification" for reward models


@dataclass
class Manifest:
    name: str
    kind: str
    status: str
    config_hash: str
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # upstream name -> its config hash
    model: ModelRef | None = None
    tokenizer: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # role -> relative path
    # relative path -> {"size": bytes, "sha256": hex} of every file the artifact holds, written at
    # commit so a reader can tell a truncated, replaced or missing file from what the stage made.
    checksums: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    started_at: float = 0.0
    finished_at: float = 0.0
    format: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        data = dict(data)
        model = data.pop("model", None)
        known = {f for f in cls.__dataclass_fields__}
        manifest = cls(**{k: v for k, v in data.items() if k in known})
        manifest.model = ModelRef(**model) if model else None
        return manifest


@dataclass
class Artifact:
    """A finished stage output: its directory and manifest."""

    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    def file(self, role: str) -> Path:
        if role not in self.manifest.files:
            raise AlignError(f"artifact '{self.name}' ({self.path}) has no '{role}' file; it has: "
                             f"{', '.join(sorted(self.manifest.files)) or 'none'}.")
        return inside(self.path, self.manifest.files[role], f"artifact '{self.name}' file '{role}'")

    def model_path(self) -> Path:
        if not self.manifest.model:
            raise AlignError(f"artifact '{self.name}' ({self.path}) holds no model.")
        return inside(self.path, self.manifest.model.path, f"artifact '{self.name}' model")

    def tokenizer_path(self) -> Path:
        """The tokenizer saved with the artifact's model (in the model directory by default)."""
        return inside(self.path, self.manifest.tokenizer or "model", f"artifact '{self.name}' tokenizer")


def inside(root: Path, relative: str, what: str) -> Path:
    """`root / relative`, refused when it resolves outside `root` (`..`, an absolute path, or a
    symlink pointing elsewhere): a manifest must not make a stage read files the recipe never
    named."""
    path = Path(root) / relative
    if not path.resolve().is_relative_to(Path(root).resolve()):
        raise AlignError(f"{what} is '{relative}', which points outside {root}; an artifact may "
                         "only name files inside its own directory. Rebuild it with `align run`.")
    return path


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("align", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
                 "bitsandbytes"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def stable_hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_hash(stage_config: dict, input_hashes: dict[str, str], data_fingerprint: str = "") -> str:
    """Hash of what determines a stage's output: its resolved config, its inputs' hashes and
    the content of the data files it reads."""
    return stable_hash({"config": stage_config, "inputs": input_hashes, "data": data_fingerprint})


def file_fingerprint(paths: list[Path]) -> str:
    """Names and contents, not full paths: a moved run directory or recipe keeps its hashes."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: (p.name, str(p))):
        h.update(p.name.encode())
        if p.is_file():
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(path: Path) -> Manifest | None:
    """The manifest of a directory, or None when it is missing or incomplete."""
    file = Path(path) / MANIFEST
    if not file.exists():
        return None
    try:
        data = json.loads(file.read_text())
        manifest = Manifest.from_dict(data)
    except (json.JSONDecodeError, TypeError):
        return None
    return manifest if manifest.status == "complete" else None


def load_artifact(path: str | Path) -> Artifact:
    path = Path(path)
    if not path.exists():
        raise AlignError(f"no artifact at {path}: the directory does not exist.")
    refuse_unfinished_dir(path)
    manifest = read_manifest(path)
    if manifest is None:
        raise AlignError(f"{path} is not a finished artifact: {MANIFEST} is missing or "
                         "incomplete (the stage did not finish; rerun the recipe to resume it).")
    verify_artifact(path, manifest)
    return Artifact(path=path, manifest=manifest)


class StageDirs:
    """The directories of one stage in a run: final, partial (work in progress), replaced."""

    def __init__(self, run_dir: Path, name: str):
        self.run_dir = Path(run_dir)
        self.name = name
        self.final = self.run_dir / name
        self.partial = self.run_dir / f"{name}.partial"
        self.checkpoints = self.partial / "checkpoints"

    def finished(self, expected_hash: str | None = None) -> Artifact | None:
        manifest = read_manifest(self.final)
        if manifest is None or (expected_hash and manifest.config_hash != expected_hash):
            return None
        verify_artifact(self.final, manifest)  # up to date only if it is what the stage wrote
        return Artifact(self.final, manifest)

    def begin(self, config_hash: str) -> bool:
        """Prepare the partial directory; True when it resumes earlier work of the same hash."""
        progress = self.partial / PROGRESS
        if progress.exists():
            try:
                if json.loads(progress.read_text()).get("config_hash") == config_hash:
                    self.drop_temporaries()  # what a killed attempt left half-written
                    return True
            except json.JSONDecodeError:
                pass
            shutil.rmtree(self.partial)
        elif self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        write_json_atomic(progress, {"config_hash": config_hash, "started_at": time.time()})
        return False

    def last_checkpoint(self) -> Path | None:
        if not self.checkpoints.exists():
            return None
        ckpts = [p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
                 and (p / "trainer_state.json").exists()]
        return max(ckpts, key=lambda p: int(p.name.split("-")[-1])) if ckpts else None

    def clean_after_failure(self) -> None:
        """After a failed attempt: without a complete checkpoint nothing is worth resuming and
        the partial directory goes; with one, only the resume state stays (the progress file,
        complete checkpoints, what the stage saved beside them) and temporary files and
        half-written checkpoints go."""
        if not self.partial.exists():
            return
        if self.last_checkpoint() is None:
            shutil.rmtree(self.partial, ignore_errors=True)
            return
        self.drop_temporaries()

    def drop_temporaries(self) -> None:
        """Half-written files (atomic writes never renamed) and checkpoints a kill interrupted
        while saving (no trainer_state.json, which is written last)."""
        for leftover in self.partial.rglob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        for ckpt in self.checkpoints.glob("checkpoint-*"):
            if not (ckpt / "trainer_state.json").exists():
                shutil.rmtree(ckpt, ignore_errors=True)

    def commit(self, manifest: Manifest) -> Artifact:
        """Write the manifest, then swap the partial directory into place.

        Each step leaves a state a rerun can finish (see `recover`): killed before the manifest
        is renamed into place, the partial directory still has its checkpoints and progress
        file and resumes; killed after, the rerun only tidies it and moves it into place.
        """
        manifest.status = "complete"
        manifest.finished_at = time.time()
        manifest.checksums = record_checksums(self.partial)
        manifest.format = CHECKED_FORMAT
        write_json_atomic(self.partial / MANIFEST, manifest.to_dict())
        self._promote()
        return Artifact(self.final, manifest)

    def _promote(self) -> None:
        """Partial (with a complete manifest) -> final: drop the resume state, then swap."""
        self.drop_temporaries()
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        (self.partial / PROGRESS).unlink(missing_ok=True)
        if self.final.exists():
            replaced = self.run_dir / ".replaced" / f"{self.name}-{time.time_ns()}"
            replaced.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.final, replaced)
            os.replace(self.partial, self.final)
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            os.replace(self.partial, self.final)

    def recover(self, expected_hash: str | None = None) -> bool:
        """Finish a commit a kill interrupted: a partial directory whose manifest is complete
        (and of the expected hash) is the finished stage; move it into place. Also removes
        the old artifacts a kill left in `.replaced/`."""
        replaced = self.run_dir / ".replaced"
        for old in replaced.glob(f"{self.name}-*") if replaced.exists() else []:
            shutil.rmtree(old, ignore_errors=True)
        manifest = read_manifest(self.partial)
        if manifest is None or (expected_hash and manifest.config_hash != expected_hash):
            return False
        self._promote()
        return True


# ---------------------------------------------------------------------------------------------
# An artifact is what its manifest says: finished, and its files as the stage wrote them

PARTIAL_SUFFIX = ".partial"
# Work-in-progress state that commit removes; never part of a finished artifact.
NOT_RECORDED = (MANIFEST, PROGRESS)


def refuse_unfinished_dir(path: Path) -> None:
    """A `<stage>.partial/` directory (even one whose manifest is complete, as a kill during a
    commit leaves it) or a directory with resume state is work in progress, never an artifact."""
    path = Path(path)
    if not path.is_dir():
        raise AlignError(f"{path} is a file, not an artifact directory; give the directory of a "
                         "finished stage (e.g. runs/NAME/sft).")
    names = {path.name, path.resolve().name}
    if any(n.endswith(PARTIAL_SUFFIX) for n in names) or (path / PROGRESS).exists():
        raise AlignError(f"{path} is a stage's work in progress ({PARTIAL_SUFFIX} directory or "
                         f"{PROGRESS} present), not a finished artifact; rerun the recipe to "
                         "finish the stage, then use the directory without .partial.")


def _recorded_files(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or rel.parts[0] == "checkpoints" or str(rel) in NOT_RECORDED \
                or (p.name.startswith(".") and p.name.endswith(".tmp")):
            continue
        out.append(p)
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def record_checksums(root: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file of the artifact (not the resume state commit drops)."""
    return {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in _recorded_files(Path(root))}


# (path, size, mtime_ns, inode) -> sha256 already verified in this process: loading an upstream
# artifact for every later stage of a run hashes each file once.
_VERIFIED: dict[tuple, str] = {}


class ArtifactChanged(AlignError):
    """A finished artifact whose files no longer match what its manifest recorded."""


def verify_artifact(path: Path, manifest: Manifest) -> None:
    """The files the manifest names exist, and every recorded file has its size and hash."""
    path = Path(path)

    def refuse(what: str) -> None:
        raise ArtifactChanged(f"artifact '{manifest.name}' ({path}) does not match its manifest: "
                         f"{what}. It was changed after the stage finished; do not trust it. "
                         "Remove the directory and rerun `align run` to rebuild it.")

    if not isinstance(manifest.format, int) or manifest.format < CHECKED_FORMAT:
        return  # an older manifest: nothing recorded to check against
    if not isinstance(manifest.checksums, dict) or \
            (not manifest.checksums and _recorded_files(path)):
        refuse(f"its manifest (format {manifest.format}) records no checksums for its files")
    named = {f"file '{role}'": rel for role, rel in manifest.files.items()}
    if manifest.model is not None:
        named["model directory"] = manifest.model.path
    if manifest.tokenizer:
        named["tokenizer directory"] = manifest.tokenizer
    for what, rel in named.items():
        if not isinstance(rel, str) or not (path / rel).exists():
            refuse(f"its {what} '{rel}' is missing")
    for rel, record in manifest.checksums.items():
        file = path / rel
        if not isinstance(record, dict) or ".." in Path(rel).parts or Path(rel).is_absolute():
            refuse(f"its checksum entry for '{rel}' is malformed")
        if not file.is_file():
            refuse(f"'{rel}' is missing")
        stat = file.stat()
        if stat.st_size != record.get("size"):
            refuse(f"'{rel}' has {stat.st_size} bytes, the manifest recorded {record.get('size')}")
        key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        digest = _VERIFIED.get(key) or file_sha256(file)
        if digest != record.get("sha256"):
            refuse(f"the content of '{rel}' differs from what the stage wrote (SHA-256 mismatch)")
        _VERIFIED[key] = digest


def check_writable_dir(path: Path, what: str) -> None:
    """`path` is (or can be made) a directory this process can write: not a file, under no file,
    on a writable parent. Checked before any work, without creating anything."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AlignError(f"{what} {path} is a file; a directory is needed there. Give another "
                         "path or move the file.")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise AlignError(f"{what} {path} cannot be created: {probe} is a file, not a directory.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise AlignError(f"{what} {path} cannot be written: no write permission in {probe}.")
