"""One run = one directory: its files, its Optuna storage, its studies and its lock."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import StudyDirection

from autoprune.search.spec import StudyError, StudySpec, load_study
from autoprune.tasks.base import Direction

SEARCH = "search"
BASELINE = "baseline"


@dataclass(frozen=True)
class RunDir:
    """The files of one run.

    ``study.yaml`` (the resolved study), ``search_space.yaml``, ``optuna.db`` (the Optuna
    storage, unless the study names another), ``prepared/`` (cached shared work),
    ``checkpoints/`` (retrained models of front trials), ``logs/``, and the plots.
    """

    path: Path

    @property
    def study_file(self) -> Path:
        return self.path / "study.yaml"

    @property
    def space_file(self) -> Path:
        return self.path / "search_space.yaml"

    @property
    def prepared(self) -> Path:
        return self.path / "prepared"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def storage_url(self, spec: StudySpec) -> str:
        return spec.storage or f"sqlite:///{(self.path / 'optuna.db').resolve()}"

    def open_storage(self, spec: StudySpec, create: bool) -> BaseStorage:
        """The run's Optuna storage; unless ``create``, a default SQLite file must exist."""
        if spec.storage is None and not create and not (self.path / "optuna.db").is_file():
            raise StudyError(
                f"{self.path} has no optuna.db: no search has started in this run directory"
            )
        return open_storage(self.storage_url(spec))

    def checkpoint(self, kind: str, number: int) -> Path:
        """Where trial ``number`` of ``kind`` keeps its retrained weights while on the front."""
        return self.checkpoints / f"{kind}_{number:05d}"

    def load_spec(self) -> StudySpec:
        """The run's resolved study; a clear error for a missing or foreign directory."""
        if not self.path.is_dir():
            raise StudyError(f"run directory not found: {self.path}")
        if not self.study_file.is_file():
            raise StudyError(f"{self.path} is not a run directory: it has no study.yaml")
        return load_study(self.study_file)


def open_storage(url: str) -> BaseStorage:
    """An Optuna storage from an RDB URL (``sqlite:///...``, ``postgresql://...``) or
    ``journal:PATH`` (a journal file).

    Raises:
        StudyError: The URL is malformed, its driver is missing, or the storage cannot be
            read (a corrupted SQLite file, say); the storage is left as it was.
    """
    try:
        if url.startswith("journal:"):
            return JournalStorage(JournalFileBackend(url[len("journal:") :]))
        sqlite_wait = {"connect_args": {"timeout": 60}}  # several processes may write at once
        storage = RDBStorage(url, engine_kwargs=sqlite_wait if url.startswith("sqlite") else None)
        storage.get_all_studies()  # reads the tables now: a damaged file fails here
    except Exception as error:  # SQLAlchemy and its drivers raise many kinds; all mean this
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise StudyError(
            f"the Optuna storage {url} cannot be opened or read ({type(error).__name__}: "
            f"{reason}); it was left untouched. Check the URL (storage / --storage), or "
            f"restore the file from a backup"
        ) from None
    return storage


def study_name(spec: StudySpec, which: str) -> str:
    """Studies are named after the study file, so runs can share one RDB server."""
    return f"{spec.name}.{which}"


def screening_study_name(target: float) -> str:
    """The suffix of a targeted search's screening study of ``target`` (``screen-0.25``)."""
    return f"screen-{target:g}"


def open_study(
    spec: StudySpec, storage: BaseStorage, which: str, directions: Sequence[Direction]
) -> optuna.Study:
    """Create or reopen one of the run's studies: ``search`` or ``baseline``, whose
    objectives are (the task's metric in its direction, the size ratio, minimized), or a
    screening study (one objective: the fitness, minimized)."""
    return optuna.create_study(
        storage=storage,
        study_name=study_name(spec, which),
        directions=[StudyDirection[d.upper()] for d in directions],
        load_if_exists=True,
    )


class RunLock:
    """An exclusive lock on a run directory, held while a search writes to it."""

    def __init__(self, run: RunDir) -> None:
        self.file = run.path / ".lock"
        self._handle: IO[str] | None = None

    def __enter__(self) -> RunLock:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.file, "a+")  # noqa: SIM115 -- held until __exit__
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StudyError(
                f"{self.file.parent} is in use by another autoprune process; wait for it to "
                f"finish or stop it"
            ) from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def _remove(path: Path) -> None:
    """Delete a file or a directory tree at ``path``, if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Have ``write(partial)`` write a file or fill a directory at a temporary sibling of
    ``path``, then rename it into place, so that a process killed mid-write leaves no
    half-written ``path``.

    If ``write`` raises, the partial file or directory is removed and the error propagates;
    ``path`` is left as it was.
    """
    partial = path.with_name(path.name + ".partial")
    _remove(partial)
    try:
        write(partial)
    except BaseException:
        _remove(partial)
        raise
    if path.is_dir():
        _remove(path)
    partial.replace(path)


def log_to_run(run: RunDir, name: str) -> logging.Handler:
    """Also write the ``autoprune`` log to ``RUN/logs/<name>.log``; returns the handler."""
    run.logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run.logs / f"{name}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("autoprune").addHandler(handler)
    return handler
