"""`candor bench all`'s report: Markdown for docs/benchmarks.md (its own section only) and PNG charts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

SECTION_TITLE = "Speed, accuracy and the peer"
FILE_HEADER = (
    "# Benchmarks\n\n"
    "Measured figures, each section with the command that reproduces it. The preprocessing and detection\n"
    "choices are measured in [benchmarks-preprocessing.md](benchmarks-preprocessing.md).\n"
)


def replace_section(document: str | None, title: str, body: str) -> str:
    """`document` with its `## title` section (up to the next `## ` heading) replaced by `body`, or with
    the section appended; a missing document starts with FILE_HEADER. Other sections are kept verbatim."""
    section = f"## {title}\n\n{body.strip()}\n"
    if not document:
        return f"{FILE_HEADER}\n{section}"
    lines = document.splitlines(keepends=True)
    heading = f"## {title}"
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        return document.rstrip("\n") + "\n\n" + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def charts(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Three PNGs: time per photo, end-to-end latency distribution, accuracy side by side."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}

    speed = results["speed"]
    fig, ax = plt.subplots(figsize=(8.5, 2.8))
    labels = ["Candor, models in-process", "Candor, through the pipeline", "face_recognition (dlib)"]
    left = 0.0
    for step, colour in (("decode", "#8fb3d9"), ("detect", "#3b78b5"), ("embed", "#1d4a7a")):
        ax.barh(labels[0], speed[f"{step}_ms"], left=left, color=colour, label=f"Candor {step}")
        left += speed[f"{step}_ms"]
    ax.barh(labels[1], 1000 / results["pipeline"]["photos_per_s"], color="#6a9f58", label="Candor pipeline")
    ax.barh(labels[2], speed["peer_ms"], color="#c0504d", label="peer")
    ax.set_xlabel("ms per photo (lower is better)")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    paths["speed"] = out_dir / "peer-speed.png"
    fig.savefig(paths["speed"], dpi=110)
    plt.close(fig)

    latency = results["latency"]
    fig, ax = plt.subplots(figsize=(7, 3))
    for name, values, colour in (
        ("enrolment: upload → found by search", latency["enrolment_s"], "#1d4a7a"),
        ("photo: upload → COMPLETE", latency["photo_s"], "#6a9f58"),
    ):
        ordered = sorted(values)
        if ordered:
            ax.plot(
                ordered,
                [(i + 1) / len(ordered) for i in range(len(ordered))],
                drawstyle="steps-post",
                label=name,
                color=colour,
            )
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.axvline(3.0, color="grey", linestyle=":", linewidth=1)
    ax.text(1.0, 0.03, " p50 target", fontsize=7, color="grey")
    ax.text(3.0, 0.03, " p99 target", fontsize=7, color="grey")
    ax.set_xlabel("seconds end to end")
    ax.set_ylabel("share of uploads")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    paths["latency"] = out_dir / "peer-latency.png"
    fig.savefig(paths["latency"], dpi=110)
    plt.close(fig)

    accuracy = results["accuracy"]
    metrics = ["detection recall", "verification", "identification"]
    candor = [accuracy["detection_recall"], accuracy["verification_accuracy"], accuracy["identification_accuracy"]]
    peer = [
        accuracy["peer_detection_recall"],
        accuracy["peer_verification_accuracy"],
        accuracy["peer_identification_accuracy"],
    ]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    positions = range(len(metrics))
    ax.bar([p - 0.2 for p in positions], candor, width=0.4, label="Candor", color="#1d4a7a")
    ax.bar([p + 0.2 for p in positions], peer, width=0.4, label="face_recognition", color="#c0504d")
    ax.set_xticks(list(positions), metrics)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share right (higher is better)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    paths["accuracy"] = out_dir / "peer-accuracy.png"
    fig.savefig(paths["accuracy"], dpi=110)
    plt.close(fig)
    return paths
