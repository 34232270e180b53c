"""Split one manifest across processes: `--shard K/N`, and the ranks of a distributed launcher.

A shard is a contiguous run of the manifest cut on batch boundaries. With n items in batches
of b, the manifest has B = ceil(n / b) batches, and shard K of N (K counts from 0, as
launcher ranks do) takes batches [floor(K*B/N), floor((K+1)*B/N)), that is items
[floor(K*B/N)*b, min(n, floor((K+1)*B/N)*b)). Cutting on batch boundaries is what makes the
shards' outputs, merged, equal a single process's byte for byte: every batch holds the same
items, with the same padding, as in a single run over the manifest, so the model computes the
same numbers. (A cut inside a batch would pad differently and change the last bits.) A shard
may be empty when N exceeds the number of batches.

Every sharded output records its identity (`ShardInfo`: K/N, its item range, the number of
items in the manifest and the manifest's fingerprint), which resume and merge check.

Under `torchrun` or `accelerate launch` (the launcher sets RANK, WORLD_SIZE and LOCAL_RANK),
`Launch.from_env` gives each process its shard, its output path (`rank_path`: OUT with
`.shard-K-of-N` before the suffix) and its device (cuda:LOCAL_RANK), and `Launch.barrier`
waits for every rank (a gloo process group initialised from the launcher's environment), after
which rank 0 merges the shards into OUT.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from interp.errors import InterpError

#: how long a rank waits at the barrier for the others: shards of a large manifest can finish
#: hours apart, and torch's default (30 min) would fail a rank that is merely early
BARRIER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count) of a manifest."""

    index: int
    count: int

    @classmethod
    def parse(cls, spec: str) -> "Shard":
        """'K/N' with 0 <= K < N, e.g. '0/4' ... '3/4'."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
        if not m:
            raise InterpError(f"--shard '{spec}' is not K/N; give e.g. 0/4 for the first of four shards (K counts from 0)")
        k, n = int(m.group(1)), int(m.group(2))
        if n < 1:
            raise InterpError(f"--shard {spec}: the number of shards must be at least 1")
        if k >= n:
            raise InterpError(f"--shard {spec}: K counts from 0, so it must be below N (0/{n} ... {n - 1}/{n})")
        return cls(k, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def bounds(self, n_items: int, batch_size: int) -> tuple[int, int]:
        """[start, stop) of this shard's items in a manifest of `n_items`, cut on batch boundaries."""
        if batch_size < 1:
            raise InterpError("--batch-size must be at least 1")
        n_batches = -(-n_items // batch_size)
        first = self.index * n_batches // self.count
        last = (self.index + 1) * n_batches // self.count
        return min(n_items, first * batch_size), min(n_items, last * batch_size)

    def info(self, rows: Sequence[dict], batch_size: int) -> "ShardInfo":
        start, stop = self.bounds(len(rows), batch_size)
        return ShardInfo(self.index, self.count, start, stop, len(rows), manifest_fingerprint(rows))


@dataclass(frozen=True)
class ShardInfo:
    """What a sharded output records about itself, and what resume and merge check."""

    index: int
    count: int
    start: int  #: first item of the shard (its position in the manifest)
    stop: int  #: one past its last item
    manifest_items: int  #: items in the whole manifest
    manifest_fingerprint: str  #: `manifest_fingerprint` of the whole manifest

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, rows: Sequence[dict]) -> list[dict]:
        return list(rows[self.start:self.stop])

    def to_dict(self) -> dict:
        return {"index": self.index, "count": self.count, "start": self.start, "stop": self.stop,
                "manifest_items": self.manifest_items, "manifest_fingerprint": self.manifest_fingerprint}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ShardInfo":
        return cls(int(d["index"]), int(d["count"]), int(d["start"]), int(d["stop"]), int(d["manifest_items"]),
                   str(d["manifest_fingerprint"]))

    @classmethod
    def from_attrs(cls, attrs: Mapping) -> "ShardInfo | None":
        """The shard a store's attributes record (`store_attrs`), or None for a whole manifest's store."""
        return cls.from_dict(json.loads(attrs["shard"])) if attrs.get("shard") else None

    def differs(self, other: "ShardInfo | None") -> str | None:
        """How `other` (what an output records) differs from this shard, in words; None if it does not."""
        if other is None:
            return "it covers the whole manifest, not a shard"
        if other.manifest_fingerprint != self.manifest_fingerprint or other.manifest_items != self.manifest_items:
            return "it was written from another manifest"
        if (other.index, other.count) != (self.index, self.count):
            return f"it is shard {other.label}, not {self.label}"
        if (other.start, other.stop) != (self.start, self.stop):
            return (f"it holds items [{other.start}, {other.stop}) and this run's shard is [{self.start}, {self.stop}) "
                    "(another --batch-size)")
        return None


def store_attrs(info: ShardInfo | None, manifest: Sequence[dict]) -> dict:
    """What a store records of the manifest it was traced from and of its shard ("" for the whole)."""
    return {"manifest_fingerprint": info.manifest_fingerprint if info else manifest_fingerprint(manifest),
            "manifest_items": len(manifest), "shard": json.dumps(info.to_dict()) if info else ""}


def manifest_fingerprint(rows: Sequence[dict]) -> str:
    """The identity of a manifest's items, in order: every field of every row, with audio files
    named by file name (so that a manifest read on another node, where the same files are mounted
    elsewhere, has the same fingerprint)."""
    h = hashlib.sha256()
    for r in rows:
        row = dict(r)
        if row.get("audio"):
            row["audio"] = Path(str(row["audio"])).name
        h.update(json.dumps(row, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def check_coverage(infos: Sequence[ShardInfo], names: Sequence[str]) -> list[int]:
    """The order in which to concatenate shards (by K), or one line naming what does not fit:
    shards of different manifests or splits, a shard given twice, a missing one, overlapping items."""
    if not infos:
        raise InterpError("give the shards to merge")
    first = infos[0]
    for info, name in zip(infos, names):
        if info.manifest_fingerprint != first.manifest_fingerprint or info.manifest_items != first.manifest_items:
            raise InterpError(f"{name} was written from another manifest than {names[0]} (manifest fingerprints "
                              f"{info.manifest_fingerprint} and {first.manifest_fingerprint}); merge shards of one manifest")
        if info.count != first.count:
            raise InterpError(f"{name} is shard {info.label} but {names[0]} is {first.label}: shards of different "
                              "splits; merge the N shards of one split")
    seen: dict[int, str] = {}
    for info, name in zip(infos, names):
        if info.index in seen:
            raise InterpError(f"{name} and {seen[info.index]} are both shard {info.label}; give each shard once")
        seen[info.index] = name
    missing = [k for k in range(first.count) if k not in seen]
    if missing:
        raise InterpError(f"shard {missing[0]}/{first.count} is missing ({len(missing)} of {first.count} missing); "
                          "give every shard of the split")
    order = sorted(range(len(infos)), key=lambda i: infos[i].index)
    end = 0
    for i in order:
        if infos[i].start != end:
            raise InterpError(f"{names[i]} holds items [{infos[i].start}, {infos[i].stop}) but the shards before it "
                              f"end at item {end}: shards cut with different --batch-size overlap or leave gaps; "
                              "trace every shard with the same settings")
        end = infos[i].stop
    if end != first.manifest_items:
        raise InterpError(f"the shards cover {end} of the manifest's {first.manifest_items} items; give every shard")
    return order


def rank_path(out: str | os.PathLike, shard: Shard) -> Path:
    """Where a launcher's rank writes its shard of OUT: `acts.h5` -> `acts.shard-0-of-4.h5`."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard-{shard.index}-of-{shard.count}{out.suffix}")


@dataclass(frozen=True)
class Launch:
    """This process's place in a run started by `torchrun` or `accelerate launch`."""

    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Launch | None":
        """The launcher's rank and world size (RANK, WORLD_SIZE, LOCAL_RANK), or None outside one."""
        env = os.environ if env is None else env
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
            local = int(env.get("LOCAL_RANK", rank))
        except ValueError:
            raise InterpError(f"RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r} from the launcher are "
                              "not integers; start interp with torchrun or accelerate launch") from None
        if world < 1 or not 0 <= rank < world:
            raise InterpError(f"RANK={rank} is not below WORLD_SIZE={world}; start interp with torchrun or accelerate launch")
        return cls(rank, world, local)

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world_size)

    def device(self, requested: str) -> str:
        """cuda:LOCAL_RANK where CUDA is there and the device is left to choose (or is 'cuda')."""
        import torch

        if requested in ("auto", "cuda") and torch.cuda.is_available():
            # also the current device, so that nothing allocated on "cuda" lands on GPU 0
            torch.cuda.set_device(self.local_rank)
            return f"cuda:{self.local_rank}"
        return requested

    def connect(self) -> None:
        """Join the launcher's process group (at start, so a broken rendezvous fails before any work).

        The group is gloo even on GPUs: it only ever carries a barrier, no tensors, and gloo
        waits as long as it is told, where NCCL's watchdog would abort a rank that waits hours
        for slower shards (and NCCL would take memory on each GPU for its communicator)."""
        import torch.distributed as dist

        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("gloo", init_method="env://", rank=self.rank, world_size=self.world_size,
                                    timeout=BARRIER_TIMEOUT)

    def barrier(self) -> None:
        """Wait until every rank reaches this point."""
        import torch.distributed as dist

        if self.world_size == 1:
            return
        self.connect()
        dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
