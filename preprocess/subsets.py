"""Subsets: which classes, and which images of each class, an output split takes from the raw data.

    subset = Subset(classes="10", train_per_class=20, val_per_class=5, seed=0)
    classes = subset.choose_classes(all_wnids)            # the first 10 sorted WNIDs
    keys = subset.take("train", "n01440764", every_key)   # the 20 keys this class gives train

Every choice is a pure function of (seed, the names involved), never of the order in which a
reader meets the files, so the ILSVRC tars, the Kaggle layout and plain folders give the same
subset, and a rerun gives the same one again:
- classes: `--classes N` takes the first N sorted WNIDs; with `--random-classes` the N whose
  sha256("{seed}/class/{wnid}") is smallest. `--classes FILE` takes a WNID list (one per line,
  or a LOC_synset_mapping.txt); `--classes imagenette` / `imagewoof` the built-in lists.
- images: within a class, keys are ranked by sha256("{seed}/{raw split}/{key}"), and each output
  split takes a window of that ranking. `--val-from-train K` gives val ranks [0, K) of the raw
  train split and train ranks [K, K + M), so the two never overlap; otherwise train takes ranks
  [0, M) of raw train (M = `--train-per-class`, default all) and val ranks [0, K) of raw val
  (K = `--val-per-class`). `--train-from-val` draws train from raw val instead: the AlexNet blog
  post's split is `--train-from-val --val-from-train 10` (the 50,000 val images as train, 10
  train images per class as val).
A class with fewer images than its window gives what it has (recorded, so `verify` expects it).
The resolved choice is written into each split's manifest (`subset`) and `verify` re-derives it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.classes import is_wnid, read_class_list
from core.errors import UserError

SUBSET_VERSION = 1

# fast.ai's Imagenette and Imagewoof (github.com/fastai/imagenette, commit ba8db39): the class
# folders of their noisy_imagenette.csv and noisy_imagewoof.csv. Sorted, so index = position.
BUILTIN_CLASS_LISTS: dict[str, tuple[str, ...]] = {
    "imagenette": (
        "n01440764",  # tench
        "n02102040",  # English springer
        "n02979186",  # cassette player
        "n03000684",  # chain saw
        "n03028079",  # church
        "n03394916",  # French horn
        "n03417042",  # garbage truck
        "n03425413",  # gas pump
        "n03445777",  # golf ball
        "n03888257",  # parachute
    ),
    "imagewoof": (
        "n02086240",  # Shih-Tzu
        "n02087394",  # Rhodesian ridgeback
        "n02088364",  # beagle
        "n02089973",  # English foxhound
        "n02093754",  # Border terrier
        "n02096294",  # Australian terrier
        "n02099601",  # golden retriever
        "n02105641",  # Old English sheepdog
        "n02111889",  # Samoyed
        "n02115641",  # dingo
    ),
}


@dataclasses.dataclass(frozen=True)
class Subset:
    """What to take; the defaults take everything (no subset)."""

    classes: str = ""  # "" all; "N"; a name in BUILTIN_CLASS_LISTS; or a class-list file
    random_classes: bool = False  # with classes "N": draw N with `seed`, not the first N sorted
    train_per_class: int = 0  # images per class in train; 0 = all
    val_per_class: int = 0  # images per class in val (from raw val); 0 = all
    val_from_train: int = 0  # val = this many raw train images per class, held out of train
    train_from_val: bool = False  # train is drawn from raw val (needs val_from_train)
    seed: int = 0  # every draw: random classes, the per-class ranking
    class_list: tuple[str, ...] = ()  # the WNIDs a FILE or built-in name resolved to

    @classmethod
    def build(cls, classes: str = "", **fields: Any) -> Subset:
        """A checked Subset; `classes` given as a FILE or a built-in name is read here."""
        subset = cls(classes=classes, **fields)
        if classes and not classes.isdigit():
            subset = dataclasses.replace(subset, class_list=_read_class_choice(classes))
        subset.check()
        return subset

    @property
    def is_everything(self) -> bool:
        return self == Subset(seed=self.seed)

    def check(self) -> None:
        for flag, value in (
            ("--train-per-class", self.train_per_class),
            ("--val-per-class", self.val_per_class),
            ("--val-from-train", self.val_from_train),
        ):
            if value < 0:
                raise UserError(f"{flag} {value}: expected a count >= 1 (or leave it out for all)")
        if self.classes.isdigit() and int(self.classes) < 1:
            raise UserError(f"--classes {self.classes}: expected at least 1 class")
        if self.random_classes and not self.classes.isdigit():
            raise UserError(
                f"--random-classes with --classes {self.classes or '(none)'}: it draws N classes, "
                "so pass --classes N"
            )
        if self.val_from_train and self.val_per_class:
            raise UserError(
                f"--val-from-train {self.val_from_train} and --val-per-class {self.val_per_class}:"
                " val comes from one place; pass one of them"
            )
        if self.train_from_val and not self.val_from_train:
            raise UserError(
                "--train-from-val takes train from the raw val split, so val must come from "
                "elsewhere: add --val-from-train K (the AlexNet blog post's split uses 10)"
            )

    def source_split(self, split: str) -> str:
        """The raw split that output `split` is drawn from."""
        if split == "train":
            return "val" if self.train_from_val else "train"
        return "train" if self.val_from_train else "val"

    def window(self, split: str) -> tuple[int, int | None]:
        """[start, stop) of the per-class ranking that output `split` takes (stop None = all)."""
        if split == "val":
            count = self.val_from_train or self.val_per_class
            return 0, count or None
        start = self.val_from_train if self.source_split("train") == "train" else 0
        return start, start + self.train_per_class if self.train_per_class else None

    def choose_classes(self, available: Sequence[str]) -> list[str]:
        """The chosen WNIDs, sorted (class index = position)."""
        available = sorted(available)
        if not self.classes:
            return available
        if self.class_list:
            missing = sorted(set(self.class_list) - set(available))
            if missing:
                raise UserError(
                    f"--classes {self.classes}: {len(missing)} of its {len(self.class_list)} "
                    f"classes are not in the raw data ({', '.join(missing[:3])}): pass a list of "
                    f"classes the data has ({len(available)} classes, {available[0]}..)"
                )
            return sorted(self.class_list)
        count = int(self.classes)
        if count > len(available):
            raise UserError(
                f"--classes {count}: the raw data has only {len(available)} classes: "
                f"pass at most {len(available)}"
            )
        if not self.random_classes:
            return available[:count]
        return sorted(sorted(available, key=lambda wnid: _rank(self.seed, "class", wnid))[:count])

    def take(self, split: str, keys: Iterable[str]) -> list[str]:
        """The keys of one class that output `split` takes, sorted."""
        start, stop = self.window(split)
        if start == 0 and stop is None:
            return sorted(keys)
        source = self.source_split(split)
        ranked = sorted(keys, key=lambda key: _rank(self.seed, source, key))
        return sorted(ranked[start:stop])

    def rule(self) -> dict[str, Any]:
        """The choice as given, for the manifest (enough for `verify` to re-derive it)."""
        return {
            "version": SUBSET_VERSION,
            "classes": self.classes if self.classes.isdigit() or not self.classes else "list",
            "class_list_name": self.classes if self.classes in BUILTIN_CLASS_LISTS else None,
            "random_classes": self.random_classes,
            "train_per_class": self.train_per_class,
            "val_per_class": self.val_per_class,
            "val_from_train": self.val_from_train,
            "train_from_val": self.train_from_val,
            "seed": self.seed,
        }

    @classmethod
    def from_rule(cls, rule: Mapping[str, Any], class_list: Sequence[str] = ()) -> Subset:
        """The Subset a manifest's rule describes (`class_list`: the chosen classes, for "list")."""
        classes = str(rule.get("classes") or "")
        return cls(
            classes=classes,
            random_classes=bool(rule.get("random_classes")),
            train_per_class=int(rule.get("train_per_class") or 0),
            val_per_class=int(rule.get("val_per_class") or 0),
            val_from_train=int(rule.get("val_from_train") or 0),
            train_from_val=bool(rule.get("train_from_val")),
            seed=int(rule.get("seed") or 0),
            class_list=tuple(class_list) if classes == "list" else (),
        )


def expected_count(subset: Subset, split: str, available: int) -> int:
    """How many images a class with `available` raw images gives output `split`."""
    start, stop = subset.window(split)
    stop = available if stop is None else min(stop, available)
    return max(0, stop - max(0, start))


def selection_record(
    subset: Subset,
    split: str,
    source_classes: Sequence[str],
    available: Mapping[str, int],
    selected_keys: Iterable[str],
) -> dict[str, Any]:
    """What a split's manifest records: the rule, the raw classes it chose from, how many images
    each chosen class had, and a digest of the keys taken."""
    keys = sorted(selected_keys)
    chosen = subset.choose_classes(source_classes)
    return {
        "rule": subset.rule(),
        "source_split": subset.source_split(split),
        "source_classes": sorted(source_classes),
        "classes": chosen,
        "available": {wnid: int(available.get(wnid, 0)) for wnid in chosen},
        "num_selected": len(keys),
        "keys_sha256": keys_digest(keys),
    }


def check_record(record: Mapping[str, Any], split: str, classes: Sequence[str]) -> list[str]:
    """What disagrees between a manifest's subset record and the classes it holds; [] when the
    record re-derives to them."""
    try:
        subset = Subset.from_rule(record["rule"], record["classes"])
        rederived = subset.choose_classes(record["source_classes"])
    except (KeyError, TypeError, ValueError, UserError) as err:
        return [f"subset record unreadable or inconsistent ({err})"]
    problems = []
    if rederived != list(record["classes"]):
        problems.append(
            f"subset rule {record['rule']} gives classes {rederived[:3]}.. but the record lists "
            f"{list(record['classes'])[:3]}.."
        )
    if list(classes) != list(record["classes"]):
        problems.append(
            f"the manifest's {len(classes)} classes are not the subset's "
            f"{len(record['classes'])} chosen classes"
        )
    if subset.source_split(split) != record.get("source_split"):
        problems.append(
            f"the rule draws {split} from raw {subset.source_split(split)}, the record says "
            f"{record.get('source_split')}"
        )
    return problems


def keys_digest(keys: Iterable[str]) -> str:
    """sha256 over the sorted keys, one per line: "the same images" in one string."""
    digest = hashlib.sha256()
    for key in sorted(keys):
        digest.update(f"{key}\n".encode())
    return digest.hexdigest()


def _read_class_choice(value: str) -> tuple[str, ...]:
    if value in BUILTIN_CLASS_LISTS:
        return BUILTIN_CLASS_LISTS[value]
    path = Path(value)
    if not path.is_file():
        raise UserError(
            f"--classes {value!r}: expected a count N, a built-in list "
            f"({', '.join(BUILTIN_CLASS_LISTS)}) or a file of WNIDs; no such file"
        )
    wnids = read_class_list(path)
    bad = [wnid for wnid in wnids if not is_wnid(wnid)]
    if bad or not wnids:
        raise UserError(
            f"--classes {path}: expected one WNID (nXXXXXXXX) per line, got {bad[:1] or 'none'}"
        )
    return tuple(wnids)


def _rank(seed: int, scope: str, name: str) -> bytes:
    return hashlib.sha256(f"{seed}/{scope}/{name}".encode()).digest()
