"""What a training source is, as the config names it (no heavy imports: the config
module reads it before any worker starts)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Source:
    """One training source of a mixture (docs/data.md)."""

    path: str  # Parquet/JSONL shards (dir or glob), save_to_disk dir, hf:NAME, LAReQA dir, .jsonl, synthetic[:...]
    name: str | None = None  # how logs and plans name it; default: the path
    weight: float = 1.0  # share of the source's items used per epoch, in (0, 1] (a fresh subset each epoch)
    columns: dict[str, str] = field(default_factory=dict)  # hbt column -> the source's column
    languages: str | None = None  # comma-separated codes to keep; default: all
