"""fedalign's ServerApp: one federated run from a run config, evaluated centrally.

`run_server` is the whole run (used by `flwr run .`, the sweep runner and the
deployment scripts): build model and strategy, run the rounds with central
evaluation of the global model after each, and write the run directory:

    metrics.json   config, environment, per-round metrics, mask digest and wire counts
    metrics.csv    per-round metrics
    initial_model.pt, final_model.pt, mask.bin (the round-1 mask, when there is one)
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from torch.utils.data import DataLoader

from fedalign.config import resolve
from fedalign.provenance import atomic_write_bytes, atomic_write_json, atomic_write_text, environment
from fedalign.placement import PlacementLog
from fedalign.run_setup import device_for, model_for, splits_for
from fedalign.strategies import SubspaceStrategy, build_strategy
from fedalign.training import evaluate

RoundCallback = Callable[[dict], None]
ROUND_FIELDS = (
    "round", "accuracy", "loss", "train-loss", "client-test-accuracy", "fusion-gap",
    "eval-accuracy", "rejected-replies", "mask-sends", "wm-iterations", "wm-seconds", "seconds",
)
TRAIN_METRICS = ("train-loss", "client-test-accuracy", "rejected-replies", "mask-sends", "wm-iterations", "wm-seconds")


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def run_server(
    grid: Grid, run_config: Mapping[str, object], on_round: RoundCallback | None = None
) -> dict:
    """Run all rounds; return (and write) the run record."""
    config = resolve(run_config)
    out_dir = Path(str(config["output-dir"])).expanduser().resolve()
    splits = splits_for(config)
    model = model_for(config, splits)
    initial_state = {k: v.clone() for k, v in model.state_dict().items()}
    strategy = build_strategy(config, model)
    model.to(device_for(config))  # central evaluation on the run's device
    grid = placements = PlacementLog(grid)
    test_loader = DataLoader(splits.test, batch_size=512)
    rounds: list[dict] = []
    clock = {"last": time.perf_counter()}

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        state = arrays.to_torch_state_dict()
        model.load_state_dict(state)  # copies into the model's device
        loss, accuracy = evaluate(model, test_loader)
        if config["save-round-models"]:
            atomic_write_bytes(out_dir / f"round_{server_round}.pt", _torch_bytes(state))
        now = time.perf_counter()
        row = {"round": server_round, "accuracy": accuracy, "loss": loss, "seconds": now - clock["last"]}
        clock["last"] = now
        rounds.append(row)
        if on_round is not None and server_round > 0:
            on_round(row)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    started = time.time()
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial_state),
        num_rounds=int(config["num-rounds"]),
        timeout=float(config["round-timeout"]),
        train_config=ConfigRecord({"lr": float(config["lr"])}),
        evaluate_fn=central_evaluate,
    )
    for row in rounds:
        train_metrics = result.train_metrics_clientapp.get(row["round"], {})
        for key in TRAIN_METRICS:
            if key in train_metrics:
                row[key] = float(train_metrics[key])
        evaluate_metrics = result.evaluate_metrics_clientapp.get(row["round"], {})
        for key in ("eval-accuracy", "eval-loss"):
            if key in evaluate_metrics:
                row[key] = float(evaluate_metrics[key])
        if "client-test-accuracy" in row:
            row["fusion-gap"] = row["client-test-accuracy"] - row["accuracy"]

    record = {
        "config": config,
        "environment": environment(),
        "started": started,
        "wall_seconds": time.time() - started,
        "rounds": rounds,
        "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
    }
    if isinstance(strategy, SubspaceStrategy):
        mask = strategy.mask
        record["mask"] = {
            "digest": mask.digest,
            "fixed_fraction": mask.fixed_fraction,
            "packed_bytes": mask.packed_nbytes,
            "sends_per_node": {str(k): v for k, v in sorted(strategy.mask_sends.items())},
            "resends": strategy.mask_resends,
            "bytes_sent": strategy.mask_bytes_sent,
            "nodes": {str(k): v for k, v in sorted(strategy.node_log.items())},
        }
        atomic_write_bytes(out_dir / "mask.bin", mask.to_bytes())
    record["rejected_replies"] = getattr(strategy, "rejected_replies", 0)
    record["placement"] = placements.summary()
    final_arrays = result.arrays if result.arrays is not None else ArrayRecord(initial_state)
    atomic_write_bytes(out_dir / "initial_model.pt", _torch_bytes(initial_state))
    atomic_write_bytes(out_dir / "final_model.pt", _torch_bytes(final_arrays.to_torch_state_dict()))
    atomic_write_text(out_dir / "metrics.csv", _rounds_csv(rounds))
    atomic_write_json(out_dir / "metrics.json", record)
    return record


def _rounds_csv(rounds: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROUND_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rounds)
    return buffer.getvalue()


def build_server_app(
    overrides: Mapping[str, object] | None = None, on_round: RoundCallback | None = None
) -> ServerApp:
    """A ServerApp running `run_server` on the run config updated by `overrides`."""
    server_app = ServerApp()
    extra = dict(overrides or {})

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_server(grid, {**context.run_config, **extra}, on_round=on_round)

    return server_app


app = build_server_app()
