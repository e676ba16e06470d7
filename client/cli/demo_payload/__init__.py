"""The payload ``phpo demo`` submits (train.py + search_space.json), shipped as package data so
the demo works from a plain ``pip install 'phpo[all]'``. examples/demo/README.md explains it."""

from pathlib import Path

PAYLOAD_DIR = Path(__file__).resolve().parent
FILES = ("train.py", "search_space.json")
