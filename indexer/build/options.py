"""What a build is asked to do (:class:`BuildOptions`) and what it did (:class:`BuildReport`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["BuildOptions", "BuildReport", "TRANSIENT_REASONS"]

#: Failure reasons worth retrying on the next run without any change to the item.
TRANSIENT_REASONS = frozenset(
    {
        "timeout",
        "connection-error",
        "host-unreachable",
        "http-429",
        "http-500",
        "http-502",
        "http-503",
        "http-504",
        "worker-crashed",
    }
)


@dataclass(frozen=True)
class BuildOptions:
    """How a build runs. Defaults suit a laptop; the CLI exposes each one."""

    batch_size: int | None = None  # None: default_batch_size(model): 8 on CPU, sized from free memory on GPU
    workers: int | None = None  # decode worker processes; None: sized from the cores
    commit_every: int = 2048  # images per commit unit
    commit_seconds: float = 60.0  # or this many seconds, whichever comes first
    max_pixels: int | None = None  # None: indexer.media.decode.DEFAULT_MAX_PIXELS
    max_bytes: int = 512 * 1024 * 1024  # a file larger than this is a failure
    gpu_decode: bool | None = None  # JPEGs decoded on the model's device (nvJPEG); None: on a CUDA device
    prune: bool = False  # retire images whose files are gone from the sources
    retry_failed: bool = False  # retry every recorded failure, not only transient ones
    rehash: bool = False  # read every unchanged-looking local file: a new content hash means changed
    build_index: bool = True
    index_factory: str | None = None
    memory_budget: int | None = None
    recall_target: float = 0.95
    cache_dir: str | None = None  # downloaded media; default COLLECTION/cache/media
    progress: bool = False
    executor: str = "local"  # "local" (decode workers + this process's model) or "ray" (Ray Data)
    ray_address: str | None = None  # an existing Ray cluster ("auto", "ray://host:10001"); None: start one


@dataclass
class BuildReport:
    """What a build did. ``failed_by_reason`` counts failures found in this run."""

    collection: str
    scanned: int = 0
    unchanged: int = 0
    encoded: int = 0
    reused: int = 0  # new or changed images whose content was already indexed (hash match)
    metadata_updated: int = 0
    replaced: int = 0  # old vectors retired because their file changed
    replaced_by_failure: int = 0  # old vectors retired because their changed file no longer reads
    pruned: int = 0
    pruned_failures: int = 0  # recorded failures cleared because their file is gone
    rehashed: int = 0  # files read to compare content hashes (--rehash)
    skipped_failed: int = 0  # known failures not retried
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0  # rows whose key appeared earlier in the scan
    alternative_locations: int = 0  # images read from an alternative URL (Audubon Core) because the first failed
    seconds: float = 0.0
    encode_seconds: float = 0.0
    decoded_on_device: int = 0  # images whose JPEG the model's device decoded (gpu_decode)
    precision: str | None = None  # the model's precision, when the build loaded it (None: nothing to encode)
    generation: int = 0
    images: int = 0
    index: dict | None = None
    source_reports: dict[str, dict] = field(default_factory=dict)
    normalised: dict[str, dict] = field(default_factory=dict)  # what the value normalisation changed (indexer.dwc)

    @property
    def failed(self) -> int:
        return sum(self.failed_by_reason.values())

    @property
    def images_per_second(self) -> float:
        done = self.encoded + self.reused
        return done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["failed"] = self.failed
        d["images_per_second"] = round(self.images_per_second, 3)
        return d
