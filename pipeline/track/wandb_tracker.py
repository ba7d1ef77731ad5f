"""``log=wandb``: one W&B run per run or trial, under ``RUN_DIR/wandb/`` (a trial's: ``SWEEP_DIR/trials/TRIAL/``).

Each is a run object of its own (``reinit="create_new"``, an explicit id), never the global
``wandb.run``, so the members of a population, stepped together, log each into its own run. A
sweep's trials are grouped by the sweep folder's name (``group=``); the config is ``wandb.config``.
Online when the environment says so (``WANDB_MODE``, ``WANDB_API_KEY``, or ``wandb login``),
offline otherwise (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it later). A resumed run,
or a trial its sweep runs again, continues the W&B run its folder already holds.
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path
from typing import Any

from pipeline.hooks import RunInfo
from pipeline.track.tracker_base import Tracker, need


def logged_in() -> bool:
    """Whether ``wandb login`` stored a key for the W&B host (read from the netrc file, no network)."""
    try:
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth
    except ImportError:  # another wandb version: only the environment says online
        return False
    try:
        return bool(read_netrc_auth(host=os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")))
    except Exception:  # an unreadable netrc is not a login
        return False


def wandb_mode() -> str | None:
    """``None`` where ``WANDB_MODE`` decides (wandb reads it), else online with a key, else offline."""
    if os.environ.get("WANDB_MODE"):
        return None
    return "online" if os.environ.get("WANDB_API_KEY") or logged_in() else "offline"


def earlier_run_id(folder: Path) -> str | None:
    """The id of the latest W&B run written under ``folder`` (``[offline-]run-DATE_TIME-ID``)."""
    runs = sorted(p for p in folder.glob("*run-*-*") if p.is_dir() and not p.is_symlink())
    return runs[-1].name.rsplit("-", 1)[1] if runs else None


def new_run_id() -> str:
    """Eight lowercase letters and digits, as W&B makes its own ids."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class WandbTracker(Tracker):
    name = "wandb"

    def check(self) -> None:
        need("wandb", "wandb")

    def start(self, run: RunInfo) -> None:
        wandb = need("wandb", "wandb")
        folder = Path(run.run_dir)
        again = run.first_step > 0 or run.trial is not None
        earlier = earlier_run_id(folder / "wandb") if again else None
        mode = wandb_mode()
        sweep: dict[str, Any] = {}
        if run.sweep_dir is not None:
            name = Path(run.sweep_dir).name
            sweep = {"group": name, "job_type": "trial", "name": f"{name}-trial-{run.trial}"}
        self.wandb_run = wandb.init(
            dir=str(folder), project=run.experiment or None, config=run.config, id=earlier or new_run_id(),
            resume="allow" if earlier else None, reinit="create_new", **({"mode": mode} if mode else {}),
            **({"name": folder.name} | sweep),
            settings=wandb.Settings(silent=mode == "offline"))
        if run.swept:
            self.wandb_run.config.update({"swept": run.swept}, allow_val_change=True)

    def write(self, step: int, values: dict[str, float]) -> None:
        self.wandb_run.log(values, step=step)  # an evaluation at a step already logged joins its row

    def stop(self, finished: bool) -> None:
        self.wandb_run.finish(exit_code=0 if finished else 1)
