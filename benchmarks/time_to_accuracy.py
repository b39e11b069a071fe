"""Time to accuracy: the quickstart's wall time (Fashion-MNIST shards -> fit -> test) and its test accuracy.

    python -m benchmarks.time_to_accuracy            # ~10 min on 2 cores; not part of `run --quick`
    python -m benchmarks.time_to_accuracy -- --trainer.max_epochs 1     # extra arguments go to `perceiver-lit fit`

Runs `scripts/quickstart.sh` unchanged (configs/quickstart.yaml) in a fresh run directory, and reads the
figures from its own output: the per-stage seconds of its final "done:" line and `test/acc1`. Goal: >= 88% test
accuracy. The shards are written once into DATA_DIR (default data/fashion-mnist) and reused, as the script does;
their writing time is reported separately ("shards_s") and is 0 when they already exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

GOAL = 0.88
_DONE = re.compile(r"done: test accuracy (\S+) \| fit (\d+) s, test (\d+) s, total (\d+) s")
_ACC = re.compile(r"test/acc1[=:\s|]+([0-9.]+)")


def parse_log(text: str) -> dict[str, Any]:
    """Figures from quickstart.sh's output: test accuracy (fraction) and fit / test / total seconds."""
    out: dict[str, Any] = {}
    m = _DONE.search(text)
    if m:
        acc, fit, test, total = m.groups()
        out.update(fit_s=int(fit), test_s=int(test), total_s=int(total))
        if acc != "?":
            out["test_acc"] = float(acc)
    if "test_acc" not in out:
        accs = _ACC.findall(text)
        if accs:
            out["test_acc"] = float(accs[-1])
    if "test_acc" in out and out["test_acc"] > 1:  # a percentage
        out["test_acc"] /= 100
    return out


def run(extra: list[str], data_dir: str, run_dir: str | None, timeout: float) -> dict[str, Any]:
    env = dict(os.environ, DATA_DIR=data_dir, PYTHON=sys.executable, WANDB_MODE="offline")
    with tempfile.TemporaryDirectory(prefix="t2a-") as tmp:
        env["RUN_DIR"] = run_dir or os.path.join(tmp, "quickstart")
        had_shards = os.path.exists(os.path.join(data_dir, "index.json"))
        t0 = time.perf_counter()
        p = subprocess.run(
            ["bash", os.path.join(common.ROOT, "scripts", "quickstart.sh"), *extra],
            cwd=common.ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        wall = time.perf_counter() - t0
    text = p.stdout + p.stderr
    figures = parse_log(text)
    result = {
        "env": common.environment("cpu"),
        "extra_args": extra,
        "returncode": p.returncode,
        "wall_s": round(wall, 1),
        "shards_reused": had_shards,
        **figures,
        "goal_acc": GOAL,
        "reached_goal": figures.get("test_acc", 0) >= GOAL,
    }
    if "total_s" in figures and "fit_s" in figures:
        result["shards_s"] = figures["total_s"] - figures["fit_s"] - figures["test_s"]
    if p.returncode:
        result["error_tail"] = text[-2000:]
    return result


def markdown(r: dict[str, Any]) -> str:
    acc = f"{100 * r['test_acc']:.2f}%" if "test_acc" in r else "-"
    lines = [
        f"# Time to accuracy ({r['env']['time_utc']} UTC, {r['env']['cpus']} CPUs, load {r['env']['load_avg'][0]:.1f})",
        "",
        "`scripts/quickstart.sh` (configs/quickstart.yaml"
        + (f" + {' '.join(r['extra_args'])}" if r["extra_args"] else "")
        + ")",
        "",
        "| test accuracy | goal | fit s | test s | shards s | total wall s |",
        "|---|---|---|---|---|---|",
        f"| **{acc}** | {100 * r['goal_acc']:.0f}% ({'reached' if r['reached_goal'] else 'not reached'}) | "
        f"{r.get('fit_s', '-')} | {r.get('test_s', '-')} | {r.get('shards_s', '-')} | {r['wall_s']} |",
    ]
    if r["returncode"]:
        lines += ["", f"quickstart.sh exited with {r['returncode']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.path.join(common.ROOT, "data", "fashion-mnist"))
    p.add_argument("--run-dir", default=None, help="keep the run here (default: a temporary directory)")
    p.add_argument("--timeout", type=float, default=3600)
    args = p.parse_args(argv)
    result = run(extra, args.data_dir, args.run_dir, args.timeout)
    return common.publish(args, "time_to_accuracy", result, markdown(result))


if __name__ == "__main__":
    main()
