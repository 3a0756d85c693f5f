"""`verify URL`: a shard directory in object storage checked against its manifest, streamed.

    python -m preprocess verify s3://bucket/imagenet          # its train/ and val/
    python -m preprocess verify s3://bucket/imagenet/train

Per shard: the object's size (one HEAD), then its sha256 over ranged GETs (core.remote), and its
DALI index is there. Nothing is written to disk. A problem names the shard and its URL.
"""

from __future__ import annotations

from core.remote import MissingObjectError, RemoteDir, StoreError
from core.shard_format import MANIFEST_NAME, SPLITS, ManifestError, dali_index_name


def remote_targets(url: str) -> list[RemoteDir]:
    """The URL itself when it holds a manifest, else its train/ and val/ that do."""
    store = RemoteDir(url)
    if store.size(MANIFEST_NAME) is not None:
        return [store]
    found = [RemoteDir(f"{store.url}/{split}") for split in SPLITS]
    found = [target for target in found if target.size(MANIFEST_NAME) is not None]
    if not found:
        raise ManifestError(
            f"{store.shown_url} has no {MANIFEST_NAME}, nor train/ or val/ with one: an upload "
            "that did not finish (its manifests are written last): rerun `python -m preprocess "
            f"prepare RAW {store.shown_url}`"
        )
    return found


def verify_remote_dir(store: RemoteDir) -> tuple[int, list[str]]:
    """(shards checked, problems) of one split directory at a URL."""
    manifest = store.read_manifest()
    problems = []
    for entry in manifest.shards:
        url = store.object_url(entry.name)
        size = store.size(entry.name)
        if size is None:
            problems.append(f"{url}: shard {entry.name} is missing")
            continue
        if size != entry.bytes:
            problems.append(
                f"{url}: shard {entry.name} has {size:,} bytes, the manifest says {entry.bytes:,}"
            )
            continue
        try:
            digest = store.sha256(entry.name, entry.bytes)
        except MissingObjectError:
            problems.append(f"{url}: shard {entry.name} vanished while being read")
            continue
        if digest != entry.sha256:
            problems.append(f"{url}: shard {entry.name} sha256 differs from the manifest")
        if store.size(dali_index_name(entry.name)) is None:
            problems.append(f"{store.object_url(dali_index_name(entry.name))}: index missing")
    return len(manifest.shards), problems


def verify_url(url: str) -> int:
    """Print every problem and one line per split; 0 when all is well, else 1."""
    failed = False
    for store in remote_targets(url):
        try:
            checked, problems = verify_remote_dir(store)
        except StoreError as err:
            checked, problems = 0, [str(err)]
        for problem in problems:
            print(problem)
        verdict = "OK" if not problems else f"FAILED ({len(problems)} problems)"
        print(f"{store.shown_url}: {checked} shards, sizes and sha256 checked: {verdict}")
        failed = failed or bool(problems)
    return 1 if failed else 0
