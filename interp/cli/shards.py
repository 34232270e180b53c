"""Sharded runs: `--shard K/N` and launcher ranks for `trace`, `run`, `cascade` and `erase`, and
the commands that merge shards (`interp store merge`, `interp merge-predictions`,
`interp merge-erase`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

import typer

from interp.cli.app import app, store_app
from interp.cli.display import console
from interp.errors import InterpError

SHARD = typer.Option(None, "--shard", help="K/N: process only shard K (from 0) of N of the manifest, contiguous and cut "
                     "on batch boundaries (docs/scale.md); under torchrun or accelerate launch each rank takes its own")


class Sharding:
    """Which part of the manifest this process takes, where it writes, and on what device.

    With `--shard K/N`: that shard, written to --out. Under a launcher (RANK, WORLD_SIZE in the
    environment, WORLD_SIZE > 1) and no --shard: shard RANK/WORLD_SIZE, written to OUT's rank
    path (`acts.shard-0-of-4.h5`), on cuda:LOCAL_RANK; `finish` then waits for every rank and
    rank 0 merges the shards into OUT. Otherwise the whole manifest, to --out."""

    def __init__(self, spec: Optional[str], out: Path, device: str, resume: bool, overwrite: bool,
                 device_map: Optional[str] = None):
        from interp.shard import Launch, Shard, rank_path

        self.out, self.target, self.device, self.launch = out, out, device, None
        self.shard = Shard.parse(spec) if spec else None
        launch = Launch.from_env()
        if self.shard is None and launch is not None and launch.world_size > 1:
            if out.exists() and not (resume or overwrite):
                raise InterpError(f"{out} exists; pass --resume to complete the run or --overwrite to replace it")
            import os

            if device_map is not None and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
                raise InterpError("--device-map spreads one process over every visible GPU, so ranks on one node would "
                                  "share them; start one process per node (--nproc_per_node 1) with --device-map")
            self.launch, self.shard = launch, launch.shard
            self.target, self.device = rank_path(out, launch.shard), launch.device(device)
            launch.connect()
        self.merge_overwrite = resume or overwrite

    def select(self, rows: list[dict], batch_size: int):
        """(this process's `ShardInfo` or None, its rows). Behavioural runs cut shards on the
        requested batch size: a family's batch cap is 1 or none, so their batches line up too."""
        if self.shard is None:
            return None, rows
        info = self.shard.info(rows, batch_size)
        return info, info.select(rows)

    def finish(self, merge: Callable[[list[Path], Path, bool], object]) -> None:
        """Under a launcher: wait for every rank; rank 0 merges the shards into OUT."""
        from interp.shard import Shard, rank_path

        if self.launch is None:
            return
        try:
            self.launch.barrier()
            if self.launch.rank == 0:
                n = self.launch.world_size
                shards = [rank_path(self.out, Shard(k, n)) for k in range(n)]
                merge(shards, self.out, True)
                console.print(f"rank 0 merged {n} shards into [bold]{self.out}[/]")
        finally:
            self.launch.close()


@store_app.command("merge")
def store_merge_cmd(
    shards: List[Path] = typer.Argument(..., help="the shard stores (`interp trace --shard K/N`), in any order"),
    out: Path = typer.Option(..., "--out", help="merged store to write (.h5)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing store"),
):
    """Merge the shards of one trace into a store equal to a single process's."""
    from interp.store.merge import merge_stores

    summary = merge_stores(shards, out, overwrite=overwrite)
    console.print(f"merged {summary.n_shards} shards: store [bold]{summary.path}[/] holds {summary.n_items} items, "
                  f"{summary.n_rows} positions")


@app.command("merge-predictions")
def merge_predictions_cmd(
    shards: List[Path] = typer.Argument(..., help="the shards' predictions files (`interp run|cascade --shard K/N`)"),
    out: Path = typer.Option(..., "--out", help="merged predictions file to write (.jsonl)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing file"),
):
    """Merge the shards of one behavioural run into the predictions file one process writes."""
    from cascades.merge import merge_predictions

    summary = merge_predictions(shards, out, overwrite=overwrite)
    console.print(f"merged {summary.n_shards} shards: [bold]{summary.path}[/] holds {summary.n_items} predictions")


@app.command("merge-erase")
def merge_erase_cmd(
    shards: List[Path] = typer.Argument(..., help="the shards' --out folders (`interp erase --shard K/N`), in any order"),
    out: Path = typer.Option(..., "--out", help="folder of the merged report, predictions and erasers"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a report already in --out"),
):
    """Merge the shards of one `interp erase` run into the report one process writes."""
    from interp.experiments.erase_merge import merge_erase

    report = merge_erase(shards, out, overwrite=overwrite)
    console.print(f"merged {len(shards)} shards: report [bold]{report}[/]")
