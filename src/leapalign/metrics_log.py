"""Where per-step metrics go: metrics.jsonl always (the history), TensorBoard by default, wandb optionally; reading
and truncating that history."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLog:
    """Writes on the main process only; other processes get a logger that does nothing."""

    def __init__(self, output_dir: Path, kind: str, config: dict, enabled: bool):
        self.enabled = enabled
        self.writer = self.wandb = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(output_dir / "metrics.jsonl", "a", encoding="utf-8")
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"))
        elif kind == "wandb":
            try:
                import wandb
            except ImportError:
                raise ValueError("logger=wandb needs the wandb package: pip install 'leapalign[wandb]'") from None
            self.wandb = wandb.init(project="leapalign", dir=str(output_dir), config=config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.jsonl.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_history(path: Path) -> list[dict]:
    """metrics.jsonl -> list of records (one per logged iteration, eval records included). A line that does not
    parse is the partial write of a killed run (every record is one line, flushed whole) and is dropped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def truncate_history(path: Path, step: int) -> None:
    """Drop records after `step` (logged by a run that died after its last checkpoint), keeping resume exact."""
    kept = [r for r in read_history(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
