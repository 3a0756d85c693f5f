"""The names the storage tests share with their conftest: a module of its own, imported by a
name no other test folder uses (`from conftest import` picked up whichever conftest came first
on sys.path when tests/storage and tests/data ran in one pytest)."""

BUCKET = "imagenet"
PREFIX = "shards/train"
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")
REGION = "us-east-1"
