"""Finding the files of a manually downloaded dataset: folders, archives, split lists.

A TFDS `manual_dir` holds either what the official archives extract to or the
archives themselves (tar of any compression, or zip). Archives are extracted (once, through a temporary folder
renamed on success) into the builder's download folder, `<data_dir>/downloads/
extracted/<archive name>`, so manual_dir is only ever read. A path that is
missing is reported with the official archive it comes from.
"""

from __future__ import annotations

import logging
import tarfile
import zipfile
from collections.abc import Iterable, Sequence

import tensorflow_datasets as tfds
from etils import epath

from difnet_jax.user_errors import MissingPathError

log = logging.getLogger(__name__)


def manual_dir(dl_manager: tfds.download.DownloadManager) -> epath.Path:
    """`dl_manager.manual_dir`; a missing or empty one is a MissingPathError (a FileNotFoundError).

    TFDS's message names the folder and the builder's MANUAL_DOWNLOAD_INSTRUCTIONS,
    which name the archives expected there.
    """
    try:
        return dl_manager.manual_dir
    except AssertionError as error:  # TFDS asserts that manual_dir exists and is not empty.
        raise MissingPathError(str(error)) from None


def locate(root: epath.Path, archive: str, required: Sequence[str], extract_dir: epath.Path) -> epath.Path:
    """The folder holding every path of `required`: `root` itself, or the extraction of `root/archive`.

    Raises FileNotFoundError naming the first missing path and the archive it comes from.
    """
    missing = _first_missing(root, required)
    if missing is None:
        return root
    archive_path = root / archive
    if not archive_path.is_file():
        raise MissingPathError(
            f"Expected {root / missing}, from the official archive {archive}: extract {archive} into {root}, "
            f"or put {archive} itself there."
        )
    extracted = extract(archive_path, extract_dir / archive)
    missing = _first_missing(extracted, required)
    if missing is not None:
        raise MissingPathError(f"{archive_path} does not contain {missing}; is it the official {archive}?")
    return extracted


def _first_missing(root: epath.Path, required: Iterable[str]) -> str | None:
    return next((path for path in required if not (root / path).exists()), None)


def extract(archive: epath.Path, destination: epath.Path) -> epath.Path:
    """Extracts `archive` (.zip, or tar of any compression) to `destination` unless a complete extraction is there."""
    if destination.is_dir():
        return destination
    partial = destination.parent / f"{destination.name}.incomplete"
    if partial.exists():
        partial.rmtree()
    partial.mkdir(parents=True)
    log.info("Extracting %s to %s", archive, destination)
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zip_file:
                zip_file.extractall(partial)  # zipfile drops absolute paths and "..".
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(partial, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        partial.rmtree()
        raise ValueError(f"Cannot extract {archive}: {error}") from error
    partial.rename(destination)
    return destination


def read_ids(path: epath.Path, archive: str) -> list[str]:
    """The image ids of a split list (the first word of each non-blank line), in file order."""
    if not path.is_file():
        raise MissingPathError(f"Expected the split list {path}, from the official archive {archive}.")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def require_files(paths: Iterable[epath.Path], archive: str) -> None:
    """Raises FileNotFoundError, naming one missing path and the archive, unless every path is a file."""
    missing = [path for path in paths if not path.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more missing files)" if len(missing) > 1 else ""
        raise MissingPathError(
            f"Expected {missing[0]}{more}, from the official archive {archive}: extract it completely."
        )


def find_files(folder: epath.Path, pattern: str, archive: str) -> list[epath.Path]:
    """The files in `folder` matching the glob `pattern`, sorted; FileNotFoundError naming both if there are none."""
    paths = sorted(path for path in folder.glob(pattern) if path.is_file())
    if not paths:
        raise MissingPathError(f"Expected files {folder / pattern}, from the official archive {archive}: "
                                "extract it completely.")
    return paths
