"""Fetching a benchmark's files from the Hugging Face Hub into its own local layout.

The preparation code always reads local files; a Hub name is first turned into a local folder
holding the same files (``huggingface_hub.snapshot_download``, or ``datasets`` saving each
split as parquet when only that is installed). Both are optional imports.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from lore_rm.errors import DataError
from lore_rm.extras import missing_extra

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def looks_like_hub_name(source: str | Path) -> bool:
    """True for ``owner/name`` strings that are not an existing local path."""
    s = str(source)
    return not Path(s).exists() and bool(_HUB_NAME.match(s))


def resolve(
    source: str | Path | None,
    what: str,
    *,
    allow_patterns: Sequence[str],
    revision: str | None = None,
) -> Path:
    """A local folder for ``source``: itself, or the Hub dataset of that name (at
    ``revision``: a branch, tag or commit; default the main branch), downloaded."""
    if source is None:
        raise DataError(f"give the {what} folder (or the files it holds, by option)")
    if looks_like_hub_name(source):
        return fetch(str(source), allow_patterns=allow_patterns, revision=revision)
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    return root


def fetch(
    repo_id: str,
    *,
    allow_patterns: Sequence[str] | None = None,
    revision: str | None = None,
    config: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """A local folder with the dataset's files (downloaded once, then cached)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return _via_datasets(repo_id, config, cache_dir)
    try:
        path = snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision,
            allow_patterns=list(allow_patterns) if allow_patterns else None,
            cache_dir=cache_dir,
        )
    except Exception as e:  # network, auth, missing repo: one clear message
        raise DataError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: {e}); "
            "download the files and pass the local folder instead"
        ) from None
    return Path(path)


def snapshot_revision(path: Path) -> str | None:
    """The commit a ``snapshot_download`` folder holds (the Hub cache names it
    ``snapshots/<commit>``), or None for any other folder."""
    path = Path(path)
    return path.name if path.parent.name == "snapshots" and _COMMIT.match(path.name) else None


def hub_record(source: str | Path | None, root: Path, revision: str | None) -> dict | None:
    """What ``dataset.json`` pins of a Hub download: the repository, the revision asked for
    and the commit the files came from; None when ``source`` was a local path."""
    if source is None or not looks_like_hub_name(source):
        return None
    return {"repo": str(source), "requested": revision, "commit": snapshot_revision(root)}


def _via_datasets(repo_id: str, config: str | None, cache_dir) -> Path:
    try:
        import datasets
    except ImportError:
        raise missing_extra(
            f"{repo_id!r} is not a local path; reading it from the Hugging Face Hub",
            "huggingface_hub",
        ) from None
    try:
        dd = datasets.load_dataset(repo_id, config, cache_dir=cache_dir)
    except Exception as e:
        raise DataError(f"could not load {repo_id!r} with datasets ({e})") from None
    root = Path(cache_dir or Path.home() / ".cache" / "lore-rm") / repo_id.replace("/", "--")
    root.mkdir(parents=True, exist_ok=True)
    for split, ds in dd.items():
        target = root / f"{split}.parquet"
        if not target.exists():
            tmp = target.with_suffix(".parquet.partial")
            ds.to_parquet(str(tmp))
            tmp.replace(target)
    return root


def load_split(name: str, split: str):
    """``datasets.load_dataset(name, split=split)``: one split of a Hub dataset, as a
    ``datasets.Dataset`` (``datasets`` is an optional dependency, imported here)."""
    try:
        import datasets
    except ImportError:
        raise missing_extra(
            f"{name}: not a local file or folder; reading it as a Hugging Face Hub dataset",
            "datasets",
        ) from None
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # network, auth, missing repo or split: one clear message
        raise DataError(
            f"could not load {name!r} (split {split!r}) with datasets ({type(e).__name__}: {e}); "
            "download it and pass the local files or a save_to_disk folder instead"
        ) from None
