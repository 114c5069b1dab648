"""TrainerCallbacks the tests inject through `trainer.callbacks` ({_target_: tests.callbacks...})."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from mtllora.adapters import adapter_state_dict


class KillAtStep(TrainerCallback):
    """Ends the process abruptly (no cleanup, like a kill) when training reaches `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            sys.stdout.flush()
            os._exit(137)


class RecordRank(TrainerCallback):
    """Writes each rank's adapter weights and its loss on a fixed probe batch before and after training."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.losses: list[float] = []

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.probe = next(iter(train_dataloader))
        self.losses.append(self._loss(model))

    def _loss(self, model) -> float:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            loss = model(**self.probe).loss.item()
        model.train(was_training)
        return loss

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.losses.append(self._loss(model))
        self.directory.mkdir(parents=True, exist_ok=True)
        rank = args.process_index
        torch.save(adapter_state_dict(model), self.directory / f"rank{rank}.pt")
        (self.directory / f"rank{rank}.json").write_text(json.dumps({"probe_loss": self.losses}))


class RecordLosses(TrainerCallback):
    """Writes the training losses logged at each logging step (rank 0) to `path` as JSON."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_end(self, args, state, control, **kwargs):
        if args.process_index == 0:
            losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
            self.path.write_text(json.dumps(losses))


class RecordLogits(TrainerCallback):
    """Saves the first training batch and the trained model's eval-mode logits on it to `path` (torch.save)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.batch = {k: v for k, v in next(iter(train_dataloader)).items() if k != "labels"}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = model(**self.batch).logits
        model.train(was_training)
        torch.save({"batch": self.batch, "logits": logits}, self.path)
