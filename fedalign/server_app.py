"""fedalign's ServerApp: one federated run from a run config, evaluated centrally.

`run_server` is the whole run (used by `flwr run .`, the sweep runner and the
deployment scripts): build model and strategy, run the rounds with central
evaluation of the global model after each, and write the run directory:

    metrics.json   config, environment, outcome, per-round metrics, mask digest, wire
                   counts and effective mask schedule, partitions sampled per round
    metrics.csv    per-round metrics
    initial_model.pt, final_model.pt, mask.bin (the round-1 mask, when there is one),
    scaffold_c.pt (SCAFFOLD's server control variate c at the end)

A run whose training diverges (every reply NaN/Inf for max-failed-rounds
rounds, `TrainingDivergedError`) is a result, not a crash: the record says
`outcome: {"status": "diverged", "round": N}`, keeps the rounds before it
and the last finite global model, and has no final accuracy.
"""

from __future__ import annotations

import csv
import io
import time
from logging import WARNING
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log
from torch.utils.data import DataLoader

from fedalign.config import resolve
from fedalign.errors import UsageError
from fedalign.preflight import check_run_config
from fedalign.provenance import atomic_write_bytes, atomic_write_json, atomic_write_text, environment
from fedalign.placement import PlacementLog
from fedalign.run_guard import log_refusal, quiet_usage_tracebacks, release_simulation_engine, write_or_fallback
from fedalign.run_setup import device_for, model_for, splits_for
from fedalign.strategies import SubspaceStrategy, build_strategy
from fedalign.strategies.guarded import NoClientSucceededError, TrainingDivergedError
from fedalign.training import evaluate
from fedalign.wire import add_wire_columns

RoundCallback = Callable[[dict], None]
ROUND_FIELDS = (
    "round", "accuracy", "loss", "train-loss", "client-test-accuracy", "fusion-gap",
    "eval-accuracy", "rejected-replies", "mask-sends", "wm-iterations", "wm-seconds", "seconds",
    "bytes-down", "bytes-up", "bytes-down-node", "bytes-up-node", "mb-cumulative",
)
TRAIN_METRICS = ("train-loss", "client-test-accuracy", "rejected-replies", "mask-sends", "wm-iterations", "wm-seconds")


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def train_config_record(config: Mapping[str, object]) -> ConfigRecord:
    """What the server adds to every train message's config: nothing.

    Clients derive every local hyper-parameter (lr and its per-round decay,
    momentum, ...) from the same run config; the strategies add the round
    number, FedProx's proximal-mu and the subspace announcement. Sending a
    value the client does not read (the old `lr`) would only mislead.
    """
    return ConfigRecord()


def run_server(
    grid: Grid, run_config: Mapping[str, object], on_round: RoundCallback | None = None
) -> dict:
    """Run all rounds; return (and write) the run record."""
    config = resolve(run_config)
    check_run_config(config)  # output dir, data, model: refused before the first round
    out_dir = Path(str(config["output-dir"])).expanduser().resolve()
    splits = splits_for(config)
    model = model_for(config, splits)
    initial_state = {k: v.clone() for k, v in model.state_dict().items()}
    strategy = build_strategy(config, model)
    strategy.max_failed_rounds = int(config["max-failed-rounds"])
    model.to(device_for(config))  # central evaluation on the run's device
    grid = placements = PlacementLog(grid)
    test_loader = DataLoader(splits.test, batch_size=512)
    rounds: list[dict] = []
    clock = {"last": time.perf_counter()}
    latest = {"arrays": ArrayRecord(initial_state)}  # the last global model evaluated

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        latest["arrays"] = arrays
        state = arrays.to_torch_state_dict()
        model.load_state_dict(state)  # copies into the model's device
        loss, accuracy = evaluate(model, test_loader)
        if config["save-round-models"]:
            atomic_write_bytes(out_dir / f"round_{server_round}.pt", _torch_bytes(state))
        now = time.perf_counter()
        row = {"round": server_round, "accuracy": accuracy, "loss": loss, "seconds": now - clock["last"]}
        clock["last"] = now
        rounds.append(row)
        _save_rounds_so_far(out_dir, rounds)
        if on_round is not None and server_round > 0:
            on_round(row)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    started = time.time()
    outcome: dict[str, object] = {"status": "completed"}
    try:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial_state),
            num_rounds=int(config["num-rounds"]),
            timeout=float(config["round-timeout"]),
            train_config=train_config_record(config),
            evaluate_fn=central_evaluate,
        )
    except TrainingDivergedError as err:
        log(WARNING, "%s", err)
        outcome = {"status": "diverged", "round": err.first_round, "detail": str(err)}
    for row in rounds:
        train_metrics = strategy.client_metrics["train"].get(row["round"], {})
        for key in TRAIN_METRICS:
            if key in train_metrics:
                row[key] = float(train_metrics[key])
        evaluate_metrics = strategy.client_metrics["evaluate"].get(row["round"], {})
        for key in ("eval-accuracy", "eval-loss"):
            if key in evaluate_metrics:
                row[key] = float(evaluate_metrics[key])
        if "client-test-accuracy" in row:
            row["fusion-gap"] = row["client-test-accuracy"] - row["accuracy"]
    wire = strategy.wire.to_record()
    add_wire_columns(rounds, wire)

    record = {
        "config": config,
        "environment": environment(),
        "started": started,
        "wall_seconds": time.time() - started,
        "outcome": outcome,
        "rounds": rounds,
        "final_accuracy": rounds[-1]["accuracy"] if rounds and outcome["status"] == "completed" else None,
    }
    mask_bytes = None
    record["wire"] = wire
    if isinstance(strategy, SubspaceStrategy):
        mask = strategy.mask
        record["mask"] = {
            "digest": mask.digest,
            "fixed_fraction": mask.fixed_fraction,
            "packed_bytes": mask.packed_nbytes,
            "blob_bytes": mask.wire_nbytes,  # what one mask send adds to the wire count
            "sends_per_node": {str(k): v for k, v in sorted(strategy.mask_sends.items())},
            "resends": strategy.mask_resends,
            "bytes_sent": strategy.mask_bytes_sent,
            "nodes": {str(k): v for k, v in sorted(strategy.node_log.items())},
            "schedule": strategy.schedule_record(int(config["num-rounds"])),
        }
        mask_bytes = mask.to_bytes()
    record["rejected_replies"] = getattr(strategy, "rejected_replies", 0)
    control = getattr(strategy, "control", None)  # SCAFFOLD's server control variate c
    sampler = getattr(strategy, "sampler", None)
    if sampler is not None:  # partition ids that took part, per round (empty: every node)
        record["sampled_partitions"] = {s: {str(r): p for r, p in d.items()} for s, d in sampler.sampled.items()}
        record["partition_ids_learned"] = dict(sampler.learned)  # from the engine / by query / not told
    record["placement"] = placements.summary()
    final_arrays = latest["arrays"]  # Flower's Result.arrays is an empty record when no round aggregated

    def write(directory: Path) -> None:
        if mask_bytes is not None:
            atomic_write_bytes(directory / "mask.bin", mask_bytes)
        atomic_write_bytes(directory / "initial_model.pt", _torch_bytes(initial_state))
        atomic_write_bytes(directory / "final_model.pt", _torch_bytes(final_arrays.to_torch_state_dict()))
        atomic_write_text(directory / "metrics.csv", _rounds_csv(rounds))
        if control is not None:
            state = {k: torch.from_numpy(v) for k, v in control.items()}
            atomic_write_bytes(directory / "scaffold_c.pt", _torch_bytes(state))
        atomic_write_json(directory / "metrics.json", record)

    record["output_dir"] = str(write_or_fallback(out_dir, write))
    return record


def _save_rounds_so_far(out_dir: Path, rounds: list[dict]) -> None:
    """metrics.csv after every round, so a run that dies later keeps its finished rounds."""
    try:
        atomic_write_text(out_dir / "metrics.csv", _rounds_csv(rounds))
    except OSError:
        pass  # the final write falls back to a temp dir and says where


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
        quiet_usage_tracebacks()
        try:
            run_server(grid, {**context.run_config, **extra}, on_round=on_round)
        except UsageError as err:  # one line in the log; the run is still marked failed
            log_refusal(err)
            if isinstance(err, NoClientSucceededError):  # Ray calls to dead actors may never return
                release_simulation_engine()
            raise

    return server_app


app = build_server_app()
