"""Hugging Face datasets as files per split: a Hub name downloaded into a cache, or a directory on disk.

``hf:OWNER/NAME[:CONFIG][@REVISION]``, e.g. ``hf:HuggingFaceFW/fineweb-edu:sample-10BT``: the
dataset card (README.md) is fetched first, its YAML ``configs`` say which files make the config,
and only those are downloaded with ``huggingface_hub.snapshot_download`` into the cache
(``data.hub_cache``, by default ``<data.dir>/hub``). A second call finds them there, an
interrupted download continues where it stopped, and with ``HF_HUB_OFFLINE=1`` a cached dataset
is used without the network.

``hf:DIR[:CONFIG]``: a directory already on disk, laid out as ``snapshot_download`` leaves it (a
``local_dir``, a snapshot folder, or a cache folder ``datasets--OWNER--NAME``), or written by
``datasets``' ``save_to_disk``. It never touches the network.

Which files: the card's ``configs`` when it has them (``default: true``, ``default`` or the only
config when none is named); otherwise the Hub's naming conventions, a file going to the split
its path names (``train``, ``validation``/``valid``/``val``/``dev``, ``test``/``eval``), all files to
train when no path names one, under ``CONFIG/`` when a config is named. The validation split,
else the test split, is the val split; a dataset with neither has val carved from train.
An evaluation set needs only its own split: ``split_files`` downloads and returns just that one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from gpt2jax.data.formats import DATA_SUFFIXES, READABLE, file_kind
from gpt2jax.errors import first_line

# The Hub's conventions for split names in file paths (huggingface.co/docs/datasets/repository_structure).
# Published sizes in GPT-2 tokens of the Hub corpora gpt2jax's configs name (FineWeb-Edu's card),
# so a sweep's planner and the budget know a corpus's size before it is downloaded.
PUBLISHED_TOKENS = {
    "hf:HuggingFaceFW/fineweb-edu:sample-10BT": 10e9,
    "hf:HuggingFaceFW/fineweb-edu:sample-100BT": 100e9,
    "hf:HuggingFaceFW/fineweb-edu": 1.3e12,
}
SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclasses.dataclass(frozen=True)
class DatasetFiles:
    files: dict[str, list[Path]]  # "train", and "val" when the dataset has a validation or test split
    val_split: str | None  # "validation" or "test": the split "val" holds; None: carve val from train
    origin: dict  # where the files came from, for meta.json


def resolve(spec: str, *, cache_dir: str | Path | None = None, revision: str | None = None) -> DatasetFiles:
    """The files of ``hf:`` spec (without the prefix); revision, if given, overrides an ``@REVISION`` in it."""
    location, config, pinned = parse(spec)
    revision = revision or pinned
    files, origin = _files_by_role(spec, location, config, revision, cache_dir, _used_splits, "train")
    return _dataset_files(files, origin)


def split_files(spec: str, split: str, *, cache_dir: str | Path | None = None) -> list[Path]:
    """The files of one split of ``hf:`` spec (without the prefix), e.g. an evaluation set's validation split.

    Only that split is downloaded; the dataset needs no train split.
    """
    location, config, revision = parse(spec)
    role = _split_role(split)
    if role is None:
        raise ValueError(f"split {split!r} is none of {', '.join(SPLIT_KEYWORDS)}; name one of those.")

    def wanted(splits: dict) -> dict:
        return {name: value for name, value in splits.items() if _split_role(name) == role}

    files, _ = _files_by_role(spec, location, config, revision, cache_dir, wanted, role)
    return files[role]


def _files_by_role(spec, location, config, revision, cache_dir, used, required) -> tuple[dict, dict]:
    """({split role: files}, origin) of a dataset directory or Hub dataset, holding the splits ``used`` keeps."""
    if _is_dir(location):
        root = Path(os.path.expanduser(location))
        snapshot = _snapshot_of_cache_folder(root, revision)
        files, config = _directory_files(snapshot, config, str(root), used, required)
        return files, {"directory": str(root.resolve()), "config": config}
    if location.startswith(("/", ".", "~")) or not _HUB_NAME.fullmatch(location):
        raise FileNotFoundError(
            f"hf:{spec} is neither a local directory nor a Hub dataset name; write hf:OWNER/NAME[:CONFIG] "
            "(e.g. hf:HuggingFaceFW/fineweb-edu:sample-10BT) or hf:DIR."
        )
    return _hub_files(location, config, revision, cache_dir, used, required)


def parse(spec: str) -> tuple[str, str | None, str | None]:
    """``LOCATION[:CONFIG][@REVISION]`` -> (location, config or None, revision or None)."""
    if _is_dir(spec):
        return spec, None, None
    rest, revision = spec, None
    if "@" in rest:
        rest, _, revision = rest.rpartition("@")
    location, config = rest, None
    if ":" in rest and not _is_dir(rest):
        location, _, config = rest.rpartition(":")
    if not location or config == "" or revision == "":
        raise ValueError(f"cannot read hf:{spec}; write hf:OWNER/NAME[:CONFIG][@REVISION] or hf:DIR[:CONFIG].")
    return location, config, revision


def _is_dir(location: str) -> bool:
    return Path(os.path.expanduser(location)).is_dir()


def _dataset_files(files: dict[str, list[Path]], origin: dict) -> DatasetFiles:
    val_split = next((split for split in ("validation", "test") if files.get(split)), None)
    chosen = {"train": files["train"]} | ({"val": files[val_split]} if val_split else {})
    return DatasetFiles(chosen, val_split, {key: value for key, value in origin.items() if value})


# The Hub.


def _hub_files(repo_id: str, config: str | None, revision: str | None, cache_dir, used, required) -> tuple[dict, dict]:
    card_dir = _download(repo_id, revision, cache_dir, ["README.md"])
    commit = card_dir.name  # snapshot folders are named by commit: the download below asks for that one
    card_configs = _card_configs(card_dir)
    if card_configs is not None:
        chosen = _choose_config(card_configs, config, repo_id)
        splits = used(_config_splits(chosen, repo_id))
        patterns = sorted({pattern for split in splits.values() for pattern in split})
        config = chosen.get("config_name", "default")
    else:
        prefix = f"{config}/" if config else ""
        patterns = [f"{prefix}*{suffix}" for suffix in DATA_SUFFIXES]
    snapshot = _download(repo_id, commit, cache_dir, patterns)
    files, config = _directory_files(snapshot, config, f"hf:{repo_id}", used, required)
    return files, {"hub": repo_id, "config": config, "revision": snapshot.name}


def _snapshot_download(**kwargs) -> str:
    """huggingface_hub's snapshot_download (a seam the tests replace with a local mirror)."""
    from huggingface_hub import snapshot_download

    return snapshot_download(**kwargs)


def _download(repo_id: str, revision: str | None, cache_dir, patterns: list[str]) -> Path:
    from huggingface_hub import errors

    where = cache_dir or "huggingface_hub's default cache"
    try:
        folder = _snapshot_download(
            repo_id=repo_id, repo_type="dataset", revision=revision, cache_dir=cache_dir, allow_patterns=patterns
        )
    except getattr(errors, "IncompleteSnapshotError", ()):
        raise FileNotFoundError(
            f"hf:{repo_id} is only partly in the local cache ({where}), and the Hub cannot be reached; "
            "connect to the internet (and unset HF_HUB_OFFLINE) to finish the download."
        ) from None
    except errors.LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"hf:{repo_id} is not in the local cache ({where}), and the Hub cannot be reached; connect to "
            "the internet (and unset HF_HUB_OFFLINE), or pass --hub_cache (data.hub_cache) where it was downloaded."
        ) from None
    except errors.GatedRepoError:
        raise ValueError(
            f"hf:{repo_id} is gated; accept its terms on huggingface.co and log in with `hf auth login`."
        ) from None
    except errors.RepositoryNotFoundError:
        raise ValueError(
            f"the Hub has no dataset {repo_id!r} (or it is private: log in with `hf auth login`); check the name."
        ) from None
    except errors.RevisionNotFoundError:
        raise ValueError(f"dataset {repo_id!r} has no revision {revision!r} on the Hub.") from None
    except errors.HfHubHTTPError as error:
        raise RuntimeError(f"the Hub refused to serve hf:{repo_id} ({first_line(error)}); try again later.") from None
    return Path(folder)


# A directory on disk.


def _snapshot_of_cache_folder(root: Path, revision: str | None) -> Path:
    """A cache folder ``datasets--OWNER--NAME`` stands for its snapshot of revision (default: main)."""
    snapshots = root / "snapshots"
    if not snapshots.is_dir():
        return root
    ref = root / "refs" / (revision or "main")
    if ref.is_file():
        return snapshots / ref.read_text().strip()
    if revision and (snapshots / revision).is_dir():
        return snapshots / revision
    found = sorted(path for path in snapshots.iterdir() if path.is_dir())
    if len(found) != 1:
        raise ValueError(f"{root} holds {len(found)} snapshots and no refs/main; name one: hf:{root}@REVISION.")
    return found[0]


def _directory_files(
    root: Path, config: str | None, name: str, used, required: str
) -> tuple[dict[str, list[Path]], str | None]:
    """{split role: files} of a dataset directory, and the config they are (None for no card's configs).

    ``used`` keeps the card config's splits to read; the ``required`` role must be among them.
    """
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        if config:
            raise ValueError(f"{root} was written by save_to_disk and has no configs; drop :{config}.")
        return _by_role(_saved_files(root), name, required), None
    card_configs = _card_configs(root)
    if card_configs is not None:
        chosen = _choose_config(card_configs, config, name)
        config = chosen.get("config_name", "default")
        splits = {
            split: _matching(root, patterns, name, split)
            for split, patterns in used(_config_splits(chosen, name)).items()
        }
    else:
        splits = _conventional_splits(root, config, name)
    return _by_role(splits, name, required), config


def _by_role(splits: dict[str, list[Path]], name: str, required: str) -> dict[str, list[Path]]:
    by_role: dict[str, list[Path]] = {}
    for split, files in splits.items():
        role = _split_role(split)
        if role is not None:
            by_role.setdefault(role, []).extend(files)
    if not by_role.get(required):
        raise ValueError(f"{name} has no {required} split (it has {', '.join(sorted(splits)) or 'no data files'}).")
    return {role: sorted(set(files)) for role, files in by_role.items()}


def _card_configs(root: Path) -> list[dict] | None:
    """The ``configs`` of the YAML header of root/README.md, or None when there are none."""
    readme = root / "README.md"
    if not readme.is_file():
        return None
    from huggingface_hub.repocard import metadata_load

    try:
        metadata = metadata_load(readme) or {}
    except Exception as error:  # the YAML parser's errors have no common base
        raise ValueError(f"the YAML header of {readme} cannot be read ({type(error).__name__}); fix it.") from None
    configs = metadata.get("configs")
    return [entry for entry in configs if isinstance(entry, dict)] if isinstance(configs, list) and configs else None


def _choose_config(configs: list[dict], wanted: str | None, name: str) -> dict:
    names = [entry.get("config_name", "default") for entry in configs]
    if wanted is not None:
        if wanted not in names:
            raise ValueError(f"{name} has no config {wanted!r}; its configs are {', '.join(names)}.")
        return configs[names.index(wanted)]
    defaults = [entry for entry in configs if entry.get("default")] or [
        entry for entry in configs if entry.get("config_name", "default") == "default"
    ]
    if defaults:
        return defaults[0]
    if len(configs) == 1:
        return configs[0]
    raise ValueError(f"{name} has several configs and no default; name one as {name}:CONFIG, from {', '.join(names)}.")


def _config_splits(entry: dict, name: str) -> dict[str, list[str]]:
    """{split: path patterns} of a card config, from any of the forms ``data_files`` takes."""
    data_files = entry.get("data_files")
    if isinstance(data_files, (str, list)) and all(isinstance(item, str) for item in _as_list(data_files)):
        data_files = {"train": data_files}
    if isinstance(data_files, list):
        data_files = {item.get("split", "train"): item.get("path") for item in data_files if isinstance(item, dict)}
    if not isinstance(data_files, dict) or not data_files:
        raise ValueError(f"config {entry.get('config_name', 'default')!r} of {name} lists no data_files.")
    return {split: [pattern.lstrip("/") for pattern in _as_list(paths)] for split, paths in data_files.items()}


def _used_splits(splits: dict) -> dict:
    """The train splits, and the validation split (else the test split): what prepare reads."""
    roles = {split: _split_role(split) for split in splits}
    val_role = next((role for role in ("validation", "test") if role in roles.values()), None)
    return {split: value for split, value in splits.items() if roles[split] in ("train", val_role)}


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _matching(root: Path, patterns: list[str], name: str, split: str) -> list[Path]:
    import glob

    files = sorted(
        {Path(match) for pattern in patterns for match in glob.glob(str(root / pattern), recursive=True)}
        - {root / "README.md"}
    )
    files = [path for path in files if path.is_file()]
    if not files:
        raise FileNotFoundError(
            f"{name} lists files {', '.join(patterns)} for its {split} split, but {root} holds none; "
            "an interrupted download continues when you run the same command again with internet access."
        )
    _check_readable(files, name)
    return files


def _conventional_splits(root: Path, config: str | None, name: str) -> dict[str, list[Path]]:
    base = root / config if config else root
    if config and not base.is_dir():
        configs = sorted(path.name for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))
        raise ValueError(f"{name} has no config {config!r}; its directories are {', '.join(configs) or 'none'}.")
    files = sorted(
        path
        for path in base.rglob("*")
        if path.is_file() and path.name.endswith(DATA_SUFFIXES) and not _hidden(path.relative_to(root))
    )
    if not files:
        raise FileNotFoundError(f"{base} holds no data files; prepare reads {READABLE}.")
    named = {
        split: [path for path in files if _split_role(_path_split(path, base)) == split] for split in SPLIT_KEYWORDS
    }
    if not any(named.values()):
        return {"train": files}
    return {split: paths for split, paths in named.items() if paths}


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _path_split(path: Path, base: Path) -> str | None:
    words = re.split(r"[/\\\-._ ]+", str(path.relative_to(base)).lower())
    return next((split for split, keywords in SPLIT_KEYWORDS.items() if set(keywords) & set(words)), None)


def _split_role(split: str | None) -> str | None:
    """'train', 'validation' or 'test' for a split name, by the Hub's keywords; None for any other split."""
    if split is None:
        return None
    return next((role for role, keywords in SPLIT_KEYWORDS.items() if split.lower() in keywords), None)


def _check_readable(files: list[Path], name: str) -> None:
    unreadable = [path for path in files if file_kind(path) is None]
    if unreadable:
        raise ValueError(f"{name} has files prepare cannot read, e.g. {unreadable[0].name}; it reads {READABLE}.")


def _saved_files(root: Path) -> dict[str, list[Path]]:
    """The Arrow files of a dataset (or DatasetDict) written by ``datasets``' save_to_disk, per split."""
    if (root / "dataset_dict.json").is_file():
        split_names = json.loads((root / "dataset_dict.json").read_text()).get("splits", [])
        return {split: _saved_split_files(root / split) for split in split_names}
    return {"train": _saved_split_files(root)}


def _saved_split_files(directory: Path) -> list[Path]:
    state_path = directory / "state.json"
    try:
        state = json.loads(state_path.read_text())
        return [directory / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{state_path} is not the state.json save_to_disk writes; save the dataset again.") from None
