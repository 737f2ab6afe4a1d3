"""Run the speed benchmarks one after another and gather their tables in results/summary.md.

    python benchmarks/run_all.py --quick          # what `make bench` runs: the CPU subset, <= 5 minutes on
                                                  # 2 quiet cores, plus CUDA rows where a GPU is present
    python benchmarks/run_all.py                  # everything (long on a CPU: every mode, bigger budgets)
    python benchmarks/run_all.py --quick --only sampling --threads 1

Each benchmark still writes its own results/NAME.md and NAME.json; summary.md concatenates them,
after the Targets table (taken from bench_sampling.md) at the top.
"""

from __future__ import annotations

import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks import bench_kernels, bench_sampling, bench_training, common  # noqa: E402

BENCHMARKS = {"kernels": bench_kernels, "training": bench_training, "sampling": bench_sampling}


def split_section(lines, heading: str):
    """(the section of markdown `lines` that starts at the line `heading` and runs to the next heading of the
    same level, the other lines); ([], lines) where there is no such heading."""
    if heading not in lines:
        return [], lines
    start = lines.index(heading)
    level = heading.split(" ")[0] + " "
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(level)), len(lines))
    section = lines[start:end]
    while section and not section[-1].strip():
        section.pop()
    return section, lines[:start] + lines[end:]


def main(argv=None) -> int:
    from minidiff.cli import OneLineParser  # usage errors: one line, exit 2
    parser = OneLineParser(prog="minidiff bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CPU subset (what `make bench` runs)")
    parser.add_argument("--device", default="cpu,cuda", help="comma list; cuda is skipped where absent")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma list of {tuple(BENCHMARKS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", default=common.RESULTS_DIR, help="output folder")
    args = parser.parse_args(argv)
    names = common.parse_list(args.only)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"--only takes names among {tuple(BENCHMARKS)}, got {unknown}")

    _, notes = common.available_devices(common.parse_list(args.device))
    for note in notes:
        common.log(note)
    shared = ["--device", args.device, "--out", args.out] + (["--quick"] if args.quick else [])
    shared += ["--threads", str(args.threads)] if args.threads else []
    seconds = {}
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        common.log(f"== {name} ==")
        BENCHMARKS[name].main(shared)
        seconds[name] = time.perf_counter() - t0
    total = time.perf_counter() - start

    parts = [f"# minidiff benchmarks{' (--quick)' if args.quick else ''}", "",
             f"Machine: {common.machine_line(common.machine_info())}.", "",
             "Wall time: " + ", ".join(f"{n} {s:.0f} s" for n, s in seconds.items()) + f"; total {total:.0f} s.", ""]
    parts += [f"- {note}" for note in notes] + [""]
    sections = {}
    for name in names:
        with open(os.path.join(args.out, f"bench_{name}.md")) as f:
            sections[name] = f.read().splitlines()
    if "sampling" in sections:        # the Targets table first; the sampling section points up to it
        targets, sections["sampling"] = split_section(sections["sampling"], "## Targets")
        parts += targets + [""] if targets else []
        if targets:
            at = next((i for i, line in enumerate(sections["sampling"]) if line.startswith("## ")),
                      len(sections["sampling"]))
            sections["sampling"][at:at] = ["(The Targets table is at the top of this file.)", ""]
    for name in names:
        parts += ["#" + line if line.startswith("#") else line for line in sections[name]]   # one level down
        parts.append("")
    path = os.path.join(args.out, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    common.log(f"== done in {total:.0f} s (torch {torch.__version__}); tables in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
