"""Mutation check: break the code on purpose, one named mutation at a time; the tests must notice.

Each mutant names a file, an exact snippet of its current source and a
replacement. The repository's `fedalign/`, `tests/` and `pyproject.toml` are
copied to a temporary directory once; each mutant is applied there (never in
the checkout), the tests named for it run with `pytest -x`, and the file is
put back. A snippet that is missing or not unique is an error, so the list
cannot rot silently when the code changes: update the snippet with the code.

    python scripts/mutation_check.py            # all mutants, a table, killed/total
    python scripts/mutation_check.py --list     # names only
    python scripts/mutation_check.py --only restore-removed --only digest-check-skipped
    python scripts/mutation_check.py --jobs 1     # one mutant at a time (default: 2 copies in parallel)

Exit status: 0 when every mutant is killed (its tests fail), 1 when one
survives, 2 when a snippet is missing/ambiguous or the unmutated tests fail.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("fedalign", "tests", "pyproject.toml")

S = "tests/test_strategies.py::"
ST = "tests/test_strategy_state.py::"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]  # pytest node ids (or files) that must fail


MUTANTS = (
    Mutant(
        "restore-removed",
        "fedalign/strategies/subspace.py",
        "restored = self._round_mask.restore_fixed(arrays_to_numpy(arrays), self._sent)",
        "restored = arrays_to_numpy(arrays)",
        (ST + "test_fixed_entries_exact_and_base_state_in_sync[fedpnu-fedavgm]",
         ST + "test_fixed_entries_exact_and_base_state_in_sync[fedpnu-fedadam]"),
    ),
    Mutant(
        "gradient-zeroing-removed",
        "fedalign/masked_optim.py",
        "        grad = self.param.grad\n        if grad is None:\n            return",
        "        grad = self.param.grad\n        if grad is None or True:\n            return",
        ("tests/test_masked_optim.py", "tests/test_masked_optim_state.py"),
    ),
    Mutant(
        "fedpnu-restores-with-M-on-even-rounds",
        "fedalign/strategies/subspace.py",
        "restored = self._round_mask.restore_fixed(arrays_to_numpy(arrays), self._sent)",
        "restored = self.mask_version(self.schedule.position(server_round).version)"
        ".restore_fixed(arrays_to_numpy(arrays), self._sent)",
        (S + "test_fedpnu_alternates_mask_and_complement",),
    ),
    Mutant(
        "complement-never-taken",
        "fedalign/strategies/schedules.py",
        "return RoundPosition(version=0, complement=r % 2 == 1)",
        "return RoundPosition(version=0, complement=False)",
        (S + "test_fedpnu_alternates_mask_and_complement",),
    ),
    Mutant(
        "complement-never-taken-with-resample",
        "fedalign/strategies/schedules.py",
        "return RoundPosition(version=version, complement=(r - version * self.every) % 2 == 1)",
        "return RoundPosition(version=version, complement=False)",
        ("tests/test_run_config_strategy.py::test_fedpnu_alternates_within_each_resampled_mask",),
    ),
    Mutant(
        "digest-check-skipped",
        "fedalign/strategies/subspace.py",
        "if digest is not None and digest != mask.digest:",
        "if False:",
        (S + "test_reply_from_another_subspace_is_rejected",),
    ),
    Mutant(
        "fixed-entries-moved-check-skipped",
        "fedalign/strategies/subspace.py",
        "if values[name][fixed].tobytes() != sent[name][fixed].tobytes():",
        "if False:",
        (S + "test_aggregation_restores_fixed_entries_even_if_the_base_moves_them",),
    ),
    Mutant(
        "mask-sent-every-round",
        "fedalign/strategies/subspace.py",
        "needs_blob = self._holders.get(node) != base_mask.digest",
        "needs_blob = True",
        (S + "test_mask_is_sent_once_per_node_then_only_the_digest",),
    ),
    Mutant(
        "resend-after-mask-missing-skipped",
        "fedalign/strategies/subspace.py",
        "self._holders.pop(node, None)  # re-send mask and full model next time it is sampled",
        "pass",
        (S + "test_node_lacking_the_mask_is_not_averaged_and_gets_it_resent",),
    ),
    Mutant(
        "replies-in-arrival-order",
        "fedalign/strategies/guarded.py",
        "return sorted(accepted, key=reply_order_key)",
        "return accepted",
        (S + "test_replies_are_averaged_in_partition_order_whatever_their_arrival",),
    ),
    Mutant(
        "sampler-replaced-by-random",
        "fedalign/strategies/sampling.py",
        "chosen = self.choose(node_ids, len(messages), server_round, stream)",
        "chosen = __import__('random').sample(node_ids, len(messages))",
        ("tests/test_sampling.py::test_same_seed_same_partitions_every_round_whatever_the_node_ids",),
    ),
    Mutant(
        "base-state-not-resynced",
        "fedalign/strategies/guarded.py",
        "            sync_base_model(self.base, arrays)\n",
        "",
        (ST + "test_fixed_entries_exact_and_base_state_in_sync[fedpnu-fedavgm]",
         ST + "test_fedpnu_over_fedavgm_is_projected_heavy_ball"),
    ),
    Mutant(
        "buffers-through-server-optimizer",
        "fedalign/strategies/guarded.py",
        "arrays = self._average_buffers(self._keep_dtypes(arrays), accepted)",
        "arrays = self._keep_dtypes(arrays)",
        (ST + "test_buffers_are_averaged_plainly_and_integers_rounded",),
    ),
    Mutant(
        "integer-buffers-truncated",
        "fedalign/strategies/buffers.py",
        "return np.rint(value).astype(like.dtype)",
        "return np.asarray(value).astype(like.dtype)",
        (ST + "test_three_clients_at_seven_batches_give_seven_not_six",),
    ),
    Mutant(
        "fedpfn-accepts-resample-every",
        "fedalign/config.py",
        'if int(config["resample-every"]) > 0 and config["strategy"] != "fedpnu":',
        "if False:",
        ("tests/test_run_config_strategy.py::test_fedpfn_refuses_resample_every_in_one_line",),
    ),
    Mutant(
        "engine-partition-map-off-by-one",
        "fedalign/simulated_nodes.py",
        "{int(node): int(partition) for node, partition in mapping.items()}",
        "{int(node): int(partition) + 1 for node, partition in mapping.items()}",
        ("tests/test_sampling.py::test_ray_one_seed_bit_identical_another_seed_differs",),
    ),
    Mutant(
        "divergence-not-detected",
        "fedalign/strategies/guarded.py",
        "self._nonfinite_in_round += problem.startswith(NONFINITE)",
        "pass",
        ("tests/test_bounded_failure.py::test_rounds_of_only_non_finite_replies_end_as_diverged_with_the_first_round",),
    ),
    Mutant(
        "diverged-seed-averaged",
        "fedalign/sweep/report.py",
        "    if diverged_round(record) is not None:\n        return math.nan\n",
        "",
        ("tests/test_sweep_report.py::test_diverged_seeds_are_counted_not_averaged",),
    ),
    Mutant(
        "heap-thresholds-not-set",
        "fedalign/allocator.py",
        "return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(",
        "return bool(mallopt(M_MMAP_THRESHOLD, 128 * 1024)) and bool(",
        ("tests/test_allocator.py::test_tuned_heap_reuses_step_buffers_where_glibc_defaults_refault_them",),
    ),
    Mutant(
        "heap-not-handed-back",
        "fedalign/allocator.py",
        "        finally:\n            release_free_heap()\n",
        "        finally:\n            pass\n",
        ("tests/test_allocator.py::test_a_wrapped_call_hands_the_free_heap_back",),
    ),
    Mutant(
        "dispatch-not-largest-first",
        "fedalign/quick_poll.py",
        "found.sort(key=lambda item: -work_of(int(nodes_mapping[item[0]])))",
        "found.sort(key=lambda item: work_of(int(nodes_mapping[item[0]])))",
        ("tests/test_quick_poll.py::test_largest_partition_first_ties_keep_node_order",),
    ),
    Mutant(
        "flowers-heavy-actor",
        "fedalign/simulation.py",
        "        light_actors(),  # actors without Flower's server-side imports (~47 MiB each)\n",
        "",
        ("tests/test_simulation.py::test_fedpfn_ten_nodes_half_participation",),
    ),
)  # fmt: skip


def copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def check_snippets(mutants) -> list[str]:
    problems = []
    for m in mutants:
        text = (ROOT / m.file).read_text()
        count = text.count(m.original)
        if count != 1:
            problems.append(f"{m.name}: snippet found {count} times in {m.file} (must be exactly once): {m.original!r}")
    return problems


def pytest(workdir: Path, tests, timeout: float) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": str(workdir), "PYTHONDONTWRITEBYTECODE": "1"}
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "--no-header", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "timed out", time.monotonic() - started
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("FAILED "):
            return line.split()[1].split("::", 1)[-1][:60]
    return "?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only this mutant (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once, each in its own copy")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.only and len(mutants) != len(set(args.only)):
        print(f"unknown mutant in {args.only}; --list shows the names", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(f"{m.name:42} {m.file}" for m in mutants))
        return 0
    problems = check_snippets(mutants)
    if problems:
        print("mutation check cannot run; update the snippets in scripts/mutation_check.py:", file=sys.stderr)
        print("\n".join("  " + p for p in problems), file=sys.stderr)
        return 2

    started = time.monotonic()
    jobs = max(1, min(args.jobs, len(mutants)))
    with tempfile.TemporaryDirectory(prefix="fedalign-mutants-") as tmp:
        copies: queue.Queue[Path] = queue.Queue()
        for i in range(jobs):
            (Path(tmp) / str(i)).mkdir()
            copy_tree(Path(tmp) / str(i))
            copies.put(Path(tmp) / str(i))
        work = Path(tmp) / "0"
        probe = subprocess.run(
            [sys.executable, "-c", "import fedalign; print(fedalign.__file__)"],
            cwd=work, env={**os.environ, "PYTHONPATH": str(work)}, capture_output=True, text=True,
        )  # fmt: skip
        if not probe.stdout.strip().startswith(str(work)):
            print(f"the copy is not what gets imported: fedalign from {probe.stdout.strip()!r}", file=sys.stderr)
            return 2
        selected = sorted({t for m in mutants for t in m.tests})
        code, output, seconds = pytest(work, selected, args.timeout)
        print(f"unmutated: {len(selected)} test selections, exit {code} in {seconds:.0f} s", flush=True)
        if code != 0:
            print(output[-3000:], file=sys.stderr)
            print("the unmutated tests must pass before mutants mean anything", file=sys.stderr)
            return 2

        def run_one(m: Mutant) -> tuple:
            copy = copies.get()
            path = copy / m.file
            original = path.read_text()
            path.write_text(original.replace(m.original, m.replacement, 1))
            try:
                code, output, seconds = pytest(copy, m.tests, args.timeout)
            finally:
                path.write_text(original)
                copies.put(copy)
            if code == 1:
                verdict, detail = "killed", first_failure(output)
            elif code == 0:
                verdict, detail = "SURVIVED", "all selected tests passed"
            else:
                verdict, detail = "ERROR", f"pytest exit {code}"
                print(output[-2000:], file=sys.stderr)
            print(f"  {m.name:42} {verdict:8} {seconds:5.1f} s", flush=True)
            return (m.name, m.file, verdict, detail, seconds)

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            rows = list(pool.map(run_one, mutants))
        errors = sum(1 for r in rows if r[2] == "ERROR")

    killed = sum(1 for r in rows if r[2] == "killed")
    print()
    print("| mutant | file | verdict | first failing test | s |")
    print("|---|---|---|---|---:|")
    for name, file, verdict, detail, seconds in rows:
        print(f"| {name} | {file} | {verdict} | {detail} | {seconds:.1f} |")
    print(f"\nkilled {killed}/{len(rows)} in {time.monotonic() - started:.0f} s")
    if errors:
        return 2
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
