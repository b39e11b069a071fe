"""Run the whole benchmark suite and regenerate benchmarks/results/summary.md.

    python -m benchmarks.run [--quick] [--device cuda] [--only peers scaling mfu loader time_to_accuracy]
    python -m benchmarks.run --summary-only          # rebuild summary.md from the JSON files already there

--quick: small configs, fewer rounds, smaller loader runs, no time-to-accuracy (its last result, if any, is still
folded into the summary). Each benchmark writes <name>.json and <name>.md into the results directory; the summary
collects the headline figure of each against its goal, then appends every benchmark's own table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

ORDER = ["peers", "scaling", "mfu", "loader", "loader_media", "time_to_accuracy"]
GOALS = {"peers": 1.5, "slope": 1.1, "loader": 0.15, "mfu_cpu": 0.50, "mfu_cuda": 0.45, "accuracy": 0.88}


def _common_args(args) -> list[str]:
    a = ["--device", args.device, "--out-dir", args.out_dir]
    for flag in ("quick", "toy", "bf16", "fp32"):
        if getattr(args, flag):
            a.append(f"--{flag}")
    if args.threads:
        a += ["--threads", str(args.threads)]
    return a


def run_loaders(args) -> None:
    """The data helpers' loader benchmarks, unchanged, each in its own process (they set their own threads)."""
    small = args.quick or args.toy
    image = ["--samples", "64" if args.toy else "256" if small else "512"]
    media = ["--samples", "8" if args.toy else "32" if small else "64"]
    if small:
        image += ["--workers", "0", "--repeats", "1", "--batch-size", "32"]
        media += ["--workers", "0", "--repeats", "1"]
    if args.toy:
        media += ["--modality", "audio-raw"]
    for script, extra, name in (("loader.py", image, "loader"), ("loader_media.py", media, "loader_media")):
        out = ["--out", os.path.join(args.out_dir, name)]
        p = subprocess.run(
            [sys.executable, os.path.join(common.ROOT, "benchmarks", script), *extra, *out], cwd=common.ROOT
        )
        if p.returncode:
            print(f"run: benchmarks/{script} exited with {p.returncode}", file=sys.stderr)


def stems(out_dir: str, name: str) -> list[str]:
    """name and the separate runs saved as name_<tag> (e.g. peers_imagenet), those that exist."""
    have = sorted(f[:-5] for f in os.listdir(out_dir) if f.endswith(".json")) if os.path.isdir(out_dir) else []
    return [s for s in have if s == name or (s.startswith(name + "_") and s not in ORDER)]


def _load(out_dir: str, name: str) -> dict[str, Any] | None:
    path = os.path.join(out_dir, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _status(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**not met**")


def _flop_bound(group: str, config: str) -> str:
    """peers.flop_bound: analytic, so it is known for results written before it existed too."""
    from benchmarks import peers

    return f"{peers.flop_bound(group, config)['bound']:.2f}x" if config in peers.CONFIGS else "-"


def headline(out_dir: str) -> list[str]:
    """One row per goal: (figure, goal, measured, status)."""
    rows = []
    for stem in stems(out_dir, "peers"):
        peers = _load(out_dir, stem)
        for r in peers["rows"]:
            if r["impl"] != "ours":
                continue
            peer = next(
                p
                for p in peers["rows"]
                if p["config"] == r["config"] and p["group"] == r["group"] and p["impl"] == r["fastest_peer"]
            )
            mem_ok = None
            mem = "-"
            if r.get("peak_bytes") and peer.get("peak_bytes"):
                mem_ok = r["peak_bytes"] <= peer["peak_bytes"]
                mem = f"{r['peak_bytes'] / peer['peak_bytes']:.2f}x memory"
            ok = r["speedup_vs_fastest_peer"] >= GOALS["peers"] and mem_ok is not False
            how = (
                f"{'bf16' if peers.get('bf16') else 'fp32'}, {peers['env']['threads']} threads, "
                f"{r.get('rounds', '?')} rounds"
            )
            rows.append(
                (
                    f"train step vs {r['fastest_peer']} ({r['group']}, {r['config']}, {peers['env']['device']}, "
                    f"{how}) [{stem}]",
                    ">= 1.5x samples/s, <= 1x memory",
                    f"{r['speedup_vs_fastest_peer']:.2f}x samples/s ({r.get('speedup_cpu_time', 0):.2f}x by "
                    f"CPU time), {mem}; FLOP bound {_flop_bound(r['group'], r['config'])}",
                    _status(ok),
                )
            )
    scaling = _load(out_dir, "scaling")
    if scaling:
        f = scaling["fits"]["perceiver"]
        for k in ("time_slope", "cpu_time_slope", "memory_slope"):
            v = f.get(k)
            rows.append(
                (
                    f"Perceiver {k.replace('_', ' ')} in M ({f['sizes'][0]:,}..{f['sizes'][-1]:,})",
                    f"<= {GOALS['slope']}",
                    "-" if v is None else f"{v:.2f}",
                    _status(None if v is None else v <= GOALS["slope"]),
                )
            )
        t = scaling["fits"]["transformer"]
        if t["time_slope"] is not None:
            rows.append(("plain Transformer time slope (reference)", "~2", f"{t['time_slope']:.2f}", "-"))
    for name in ("loader", "loader_media"):
        res = _load(out_dir, name)
        if not res:
            continue
        for r in res["rows"]:
            if "overhead" in r:
                rows.append(
                    (
                        f"loader overhead {r['modality']} {r['mode']} batch {r['batch_size']}",
                        f"<= {100 * GOALS['loader']:.0f}%",
                        f"{100 * r['overhead']:.1f}%",
                        _status(r["overhead"] <= GOALS["loader"]),
                    )
                )
    for stem in stems(out_dir, "mfu"):
        mfu = _load(out_dir, stem)
        cuda = mfu["env"]["device"].startswith("cuda")
        goal = GOALS["mfu_cuda" if cuda else "mfu_cpu"]
        for r in mfu["rows"]:
            judged = not cuda or (r["config"] == "imagenet" and mfu["bf16"])  # the GPU goal: ImageNet, bf16
            rows.append(
                (
                    f"utilization {r['model']} {r['config']} ({mfu['env']['device']}, {mfu['env']['threads']} threads"
                    f"{' bf16' if mfu['bf16'] else ' fp32'})",
                    f">= {100 * goal:.0f}%" if judged else "-",
                    f"{100 * r['utilization']:.1f}% ({100 * r.get('utilization_cpu_time', 0):.1f}% by CPU time)",
                    _status(r["utilization"] >= goal) if judged else "-",
                )
            )
    t2a = _load(out_dir, "time_to_accuracy")
    if t2a:
        acc = t2a.get("test_acc")
        rows.append(
            (
                "quickstart test accuracy"
                + (" (extra args: " + " ".join(t2a["extra_args"]) + ")" if t2a["extra_args"] else ""),
                f">= {100 * GOALS['accuracy']:.0f}%",
                "-"
                if acc is None
                else f"{100 * acc:.2f}% in {t2a['wall_s']:.0f} s wall (fit {t2a.get('fit_s', '-')} s)",
                _status(t2a["reached_goal"]),
            )
        )
    lines = ["| figure | goal | measured | status |", "|---|---|---|---|"]
    return lines + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]


def summary(out_dir: str) -> str:
    lines = [
        "# Benchmark summary",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC by `python -m benchmarks.run` "
        f"(load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs). Figures compared with each "
        "other were measured side by side in one process, interleaved; absolute times on a shared machine "
        "are noise. Method: benchmarks/README.md.",
        "",
    ] + headline(out_dir)
    for stem in [s for name in ORDER for s in stems(out_dir, name)]:
        path = os.path.join(out_dir, f"{stem}.md")
        if os.path.exists(path):
            with open(path) as f:
                body = f.read().strip().splitlines()
            lines += ["", "#" + body[0], *body[1:]]  # one heading level down
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=["peers", "scaling", "mfu", "loader", "time_to_accuracy"])
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args(argv)
    todo = args.only or ["peers", "scaling", "mfu", "loader"] + ([] if args.quick or args.toy else ["time_to_accuracy"])
    if not args.summary_only:
        ca = _common_args(args)
        for name in todo:
            print(f"\n==> [{time.strftime('%H:%M:%S')}] benchmarks.{name}", flush=True)
            if name == "loader":
                run_loaders(args)
            elif name == "time_to_accuracy":
                subprocess.run(
                    [sys.executable, "-m", "benchmarks.time_to_accuracy", "--out-dir", args.out_dir], cwd=common.ROOT
                )
            else:
                # each benchmark in its own process: no model, allocator cache or thread setting carries over
                p_ = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *ca], cwd=common.ROOT)
                if p_.returncode:
                    print(f"run: benchmarks.{name} exited with {p_.returncode}", file=sys.stderr)
    text = summary(args.out_dir)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "summary.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
