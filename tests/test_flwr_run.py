"""`flwr run` end to end: fedalign's own app, and the drop-in recipe on a quickstart app.

Both runs go through a real local SuperLink in simulation mode (Ray backend),
started by `flwr run` itself on free ports; the fixture stops it by PID.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fedalign.masks import SubspaceMask, fixed_entries_equal

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
QUICKSTART = Path(__file__).resolve().parent / "quickstart_app"


def flwr_run(app: Path, env: dict, run_config: str, nodes: int) -> str:
    proc = subprocess.run(
        ["flwr", "run", str(app), "--stream", "--run-config", run_config,
         "--federation-config", f"num-supernodes={nodes} client-resources-num-cpus=1"],
        env=env, capture_output=True, text=True, timeout=420,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    return output


def test_flwr_run_dot_runs_fedpfn_on_digits(local_superlink, tmp_path):
    out = tmp_path / "run"
    output = flwr_run(REPO, local_superlink, f"num-rounds=2 output-dir='{out}'", nodes=4)
    assert "Strategy execution finished" in output
    for name in ("metrics.json", "metrics.csv", "final_model.pt", "mask.bin"):
        assert (out / name).exists(), name
    mask = SubspaceMask.from_bytes((out / "mask.bin").read_bytes())
    initial = torch.load(out / "initial_model.pt", weights_only=True)
    final = torch.load(out / "final_model.pt", weights_only=True)
    assert fixed_entries_equal(mask, initial, final)
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 1 + 3  # header, rounds 0-2


def parse_recipe(markdown: str, variant: str = "") -> dict[str, list[str]]:
    """The ```diff blocks (```diff <variant> blocks) of docs/dropin.md, keyed by the file they patch."""
    blocks = re.findall(r"```diff" + (" " + variant if variant else "") + r"\n(.*?)```", markdown, flags=re.S)
    recipe = {}
    for block in blocks:
        lines = block.rstrip("\n").split("\n")
        recipe[lines[0].removeprefix("--- ").strip()] = lines[1:]
    return recipe


def apply_recipe(source: list[str], patch: list[str]) -> list[str]:
    """Apply context (' '), removal ('-') and addition ('+') lines; each must match once."""
    lines, cursor = list(source), -1
    for entry in patch:
        tag, text = entry[0], entry[1:]
        if tag in " -":
            assert lines.count(text) == 1, f"recipe line not found exactly once: {text!r}"
            cursor = lines.index(text)
            if tag == "-":
                del lines[cursor]
                cursor -= 1
        else:
            cursor += 1
            lines.insert(cursor, text)
    return lines


def test_dropin_recipe_turns_the_quickstart_into_fedpfn(local_superlink, tmp_path):
    recipe = parse_recipe((REPO / "docs" / "dropin.md").read_text())
    changed = sum(1 for patch in recipe.values() for line in patch if line.startswith("+"))
    assert changed <= 5
    app = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, app)
    for relative, patch in recipe.items():
        path = app / relative
        path.write_text("\n".join(apply_recipe(path.read_text().split("\n"), patch)))
    out = tmp_path / "models"
    out.mkdir()
    flwr_run(app, local_superlink, f"num-server-rounds=3 save-dir='{out}'", nodes=3)

    from importlib import util

    spec = util.spec_from_file_location("qs_task", app / "pytorchexample" / "task.py")
    task = util.module_from_spec(spec)
    spec.loader.exec_module(task)
    mask = SubspaceMask.sample(task.Net(), rho=0.4, seed=0)  # what FedPFN(..., rho=0.4) samples
    initial = torch.load(out / "initial_model.pt", weights_only=True)
    final = torch.load(out / "final_model.pt", weights_only=True)
    assert fixed_entries_equal(mask, initial, final)
    moved = torch.cat([(final[n] != initial[n])[m] for n, m in mask.tensors.items()])
    assert moved.float().mean() > 0.75  # Adam trained them (some ReLU units die on digits)


def test_dropin_compact_line_makes_replies_compact(local_superlink, tmp_path):
    """The 4-line recipe plus docs/dropin.md's compact block: one more line, compact uplink."""
    markdown = (REPO / "docs" / "dropin.md").read_text()
    base, extra = parse_recipe(markdown), parse_recipe(markdown, "compact")
    assert sum(1 for patch in extra.values() for line in patch if line.startswith("+")) <= 2
    app = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, app)
    for recipe in (base, extra):
        for relative, patch in recipe.items():
            path = app / relative
            path.write_text("\n".join(apply_recipe(path.read_text().split("\n"), patch)))
    out = tmp_path / "models"
    out.mkdir()
    output = flwr_run(app, local_superlink, f"num-server-rounds=3 save-dir='{out}'", nodes=3)

    from importlib import util

    from flwr.app import ArrayRecord

    spec = util.spec_from_file_location("qs_task_compact", app / "pytorchexample" / "task.py")
    task = util.module_from_spec(spec)
    spec.loader.exec_module(task)
    net = task.Net()
    model_bytes = sum(len(a.data) for a in ArrayRecord(net.state_dict()).values())
    up = [float(x) for x in re.findall(r"'bytes-up-node': ([0-9.e+]+)", output)]
    down = [float(x) for x in re.findall(r"'bytes-down-node': ([0-9.e+]+)", output)]
    assert len(up) == 3 and len(down) == 3, output[-3000:]
    assert max(up) <= 0.61 * model_bytes  # compact replies, every round
    assert min(down) >= model_bytes  # a drop-in node gets the full model
    mask = SubspaceMask.sample(net, rho=0.4, seed=0)
    initial = torch.load(out / "initial_model.pt", weights_only=True)
    final = torch.load(out / "final_model.pt", weights_only=True)
    assert fixed_entries_equal(mask, initial, final)
    moved = torch.cat([(final[n] != initial[n])[m] for n, m in mask.tensors.items()])
    assert moved.float().mean() > 0.75
