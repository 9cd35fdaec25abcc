"""Try bad inputs on every `fedalign` entry point; count those refused in one line with exit 2.

    python scripts/bad_inputs.py              # one fresh `python -m fedalign` process per case
    python scripts/bad_inputs.py --in-process # the same cases through fedalign.cli.main (fast)

Each case runs in a scratch directory with a pre-existing output directory
whose bytes must not change; it counts as handled when the exit code is 2,
stderr is exactly one line, and that directory is byte-identical.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

SPEC = "dataset: digits\nmodel: mlp\nalphas: [0.5]\nstrategies: [fedavg]\nseeds: [0]\nrounds: 1\nclients: 2\n"


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def cases(d: Path) -> list[tuple[str, list[str]]]:
    def spec(name: str, text: str | bytes) -> str:
        path = d / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    out = str(d / "out")
    afile = d / "afile"
    afile.write_text("x")
    return [
        ("partition --clients abc", ["partition", "--clients", "abc", "--out", out]),
        ("partition --alpha -0.5", ["partition", "--alpha", "-0.5", "--out", out]),
        ("partition --alpha nan", ["partition", "--alpha", "nan", "--out", out]),
        ("partition --scheme zipf", ["partition", "--scheme", "zipf", "--out", out]),
        ("partition --dataset mnist (no data-dir)", ["partition", "--dataset", "mnist", "--out", out]),
        ("partition --data-dir missing", ["partition", "--dataset", "cifar10", "--data-dir", str(d / "nope"), "--out", out]),
        ("partition --out a file", ["partition", "--out", str(afile)]),
        ("partition --classes-per-client 11 pathological", ["partition", "--scheme", "pathological", "--classes-per-client", "11", "--out", out]),
        ("lmc --epochs 0", ["lmc", "--epochs", "0", "--out", out]),
        ("lmc --lr -1", ["lmc", "--lr", "-1", "--out", out]),
        ("lmc --model-args depth=-1", ["lmc", "--model-args", "depth=-1", "--out", out]),
        ("lmc --model-args widht=4", ["lmc", "--model-args", "widht=4", "--out", out]),
        ("lmc --model resnet --out", ["lmc", "--model", "resnet", "--out", out]),
        ("lmc --split random", ["lmc", "--split", "random", "--out", out]),
        ("lmc --granularity layer", ["lmc", "--granularity", "layer", "--out", out]),
        ("lmc --seeds 0 0", ["lmc", "--seeds", "0", "0", "--out", out]),
        ("lmc --spec list.yaml", ["lmc", "--spec", spec("list.yaml", "- 1\n- 2\n"), "--out", out]),
        ("lmc --spec a directory", ["lmc", "--spec", str(d), "--out", out]),
        ("lmc --spec momentum 1", ["lmc", "--spec", spec("m.yaml", "momentum: 1\n"), "--out", out]),
        ("lmc --spec !!python/object", ["lmc", "--spec", spec("py.yaml", "a: !!python/object:os.system ls\n"), "--out", out]),
        ("sweep missing file", ["sweep", str(d / "none.yaml"), "--out", out]),
        ("sweep lr: 0", ["sweep", spec("s1.yaml", SPEC + "lr: 0\n"), "--out", out]),
        ("sweep batch-size: -1", ["sweep", spec("s2.yaml", SPEC + "batch-size: -1\n"), "--out", out]),
        ("sweep seeds: [a]", ["sweep", spec("s3.yaml", SPEC.replace("seeds: [0]", "seeds: [a]")), "--out", out]),
        ("sweep run-config num-rounds", ["sweep", spec("s4.yaml", SPEC + "run-config: {min-nodes: 0}\n"), "--out", out]),
        ("sweep --set rounds=0", ["sweep", spec("s5.yaml", SPEC), "--set", "rounds=0", "--out", out]),
        ("sweep --only alpha=x", ["sweep", spec("s6.yaml", SPEC), "--only", "alpha=x", "--out", out]),
        ("sweep model-args {depth: x}", ["sweep", spec("s7.yaml", SPEC + "model-args: {depth: x}\n"), "--out", out]),
        ("sweep tab-indented YAML", ["sweep", spec("s8.yaml", "dataset: digits\n\tmodel: mlp\n"), "--out", out]),
        ("sweep huge alias list", ["sweep", spec("s9.yaml", "a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"), "--out", out]),
        ("report missing dir", ["report", str(d / "none")]),
        ("report --target-accuracy 2", ["report", out, "--target-accuracy", "2"]),
        ("report corrupt record", ["report", str(d / "rep")]),
    ]


def run_fresh(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "fedalign", *argv], capture_output=True, text=True,
                          timeout=300, cwd=cwd)  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def run_in_process(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    import contextlib
    import io
    import os

    from fedalign import cli

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exit_:
                code = exit_.code
            except Exception as exc:  # noqa: BLE001 - a traceback is what this script hunts for
                import traceback

                traceback.print_exc(file=err)
                code = f"exception {type(exc).__name__}"
    finally:
        os.chdir(here)
    return code, out.getvalue(), err.getvalue()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "out").mkdir()
        (d / "out" / "keep.txt").write_text("finished results")
        (d / "rep" / "cells" / "x").mkdir(parents=True)
        (d / "rep" / "cells" / "x" / "record.json").write_text('{"cell": {"alpha": 0.1}, "rounds": "no"}')
        good = 0
        all_cases = cases(d)
        for name, argv in all_cases:
            before = tree_digest(d / "out")
            code, stdout, stderr = (run_in_process if "--in-process" in sys.argv else run_fresh)(argv, d)
            lines = [line for line in stderr.splitlines() if line.strip()]
            ok = code == 2 and len(lines) == 1 and tree_digest(d / "out") == before
            good += ok
            shown = (lines[-1] if lines else stdout[-100:])[:150]
            print(f"{'ok ' if ok else 'BAD'} rc={code} lines={len(lines)} {name}: {shown}", flush=True)
        print(f"\n{good} of {len(all_cases)} refused in one line with exit 2, output directory unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
