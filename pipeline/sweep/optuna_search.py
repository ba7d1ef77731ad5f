"""Optuna behind the sweep's search interface: ``ask(n)`` points, ``report`` evaluations, ``tell`` results.

The study lives in the sweep folder (``study.journal``, Optuna's file journal), so a killed sweep
finds every trial it asked, with its parameters, intermediate values and result. Trial ids are
Optuna's trial numbers.

Reproducible across a resume: a fresh sampler is made for every batch asked, seeded by
``--search-seed`` and the number of its first trial (QMC keeps one seed: its sequence position is
kept in the study), and a batch reaches the journal whole or not at all (``optuna_journal``), so
what a trial is asked depends on the study's history alone, not on the process that asks it. A
pruner judges a member from the values it reported up to the step being decided, so values a
killed attempt reported past its checkpoint do not change the resumed decisions.
"""

from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.sweep.optuna_journal import held_journal
from pipeline.sweep.space import Dimension, Space, SpaceError, format_value

EXTRA = "pip install 'pipeline[optuna]'"
PRUNERS = ("median", "hyperband")
JOURNAL = "study.journal"
STUDY = "sweep"
# What each sampler needs besides optuna (gp: torch and scipy; cmaes: the cmaes package).
NEEDS = {"gp": ("torch", "scipy"), "cmaes": ("cmaes",)}


def require(strategy: str) -> Any:
    """``optuna`` (and what ``strategy``'s sampler needs), or one line naming how to install it."""
    try:
        optuna = importlib.import_module("optuna")
    except ImportError:
        raise PipelineError(f"--strategy {strategy} needs the optuna extra: {EXTRA}") from None
    for name in NEEDS.get(strategy, ()):
        try:
            importlib.import_module(name)
        except ImportError:
            raise PipelineError(f"--strategy {strategy} needs the {name} package: pip install {name}") from None
    # A line per trial (and GP's note that it optimizes without greenlet) would bury the progress bar.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


@dataclass(frozen=True)
class Point:
    """One asked trial: its id (the study's trial number), its values and the round it was asked in."""

    trial: int
    values: dict[str, Any]
    round: int


class Encoding:
    """The space's dimensions as Optuna distributions, and Optuna's values back as config values."""

    def __init__(self, optuna: Any, space: Space):
        self.distributions: dict[str, Any] = {}
        self.decoders: dict[str, dict[Any, Any] | type | None] = {}
        for d in space.dimensions:
            self.distributions[d.key], self.decoders[d.key] = _distribution(optuna, d)

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key in self.distributions:
            value, decoder = params[key], self.decoders[key]
            out[key] = decoder[value] if isinstance(decoder, dict) else decoder(value) if decoder else value
        return out


_PLAIN = (type(None), bool, int, float, str)


def _distribution(optuna: Any, d: Dimension) -> tuple[Any, Any]:
    """A dimension's distribution and its decoder (None, a type to cast to, or a choice table)."""
    dist = optuna.distributions
    if d.kind == "uniform":
        return dist.FloatDistribution(d.low, d.high), None
    if d.kind == "loguniform":
        return dist.FloatDistribution(d.low, d.high, log=True), None
    if d.kind == "range" and len(d.values) > 1:
        step = int(d.values[1]) - int(d.values[0])
        return dist.IntDistribution(int(d.values[0]), int(d.values[-1]), step=step), type(d.values[0])
    # choice, linspace, logspace (and a one-value range): a categorical over the listed values.
    if all(isinstance(v, _PLAIN) for v in d.values):
        return dist.CategoricalDistribution(list(d.values)), None
    spelled = {format_value(v): v for v in d.values}  # tuples (model.hidden=64,64) as their spelling
    if len(spelled) != len(set(d.values)):
        raise SpaceError(f"bad space for '{d.key}': {d.text!r} cannot be told to Optuna (values that spell alike)")
    return dist.CategoricalDistribution(list(spelled)), spelled


def sampler(optuna: Any, strategy: str, seed: int, startup: int) -> Any:
    """The sampler of one ask. ``startup`` trials (the first round) are drawn at random.

    Within a round the asked trials are still running: TPE treats them with the constant liar (a
    running trial counts as a bad result, so the next ask goes elsewhere); Optuna's GP sampler
    conditions its acquisition on running trials itself (q-batch log EI); CMA-ES asks a generation
    of distinct points; QMC's points differ by construction.
    """
    with warnings.catch_warnings():  # QMC and some arguments are marked experimental: not the user's concern
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _sampler(optuna.samplers, strategy, seed, startup)


def _sampler(s: Any, strategy: str, seed: int, startup: int) -> Any:
    if strategy == "tpe":
        return s.TPESampler(seed=seed, constant_liar=True, n_startup_trials=startup)
    if strategy == "gp":
        return s.GPSampler(seed=seed, n_startup_trials=startup)
    if strategy == "cmaes":
        return s.CmaEsSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
    if strategy == "qmc":
        return s.QMCSampler(seed=seed, warn_independent_sampling=False)
    raise PipelineError(f"unknown search '{strategy}'")


def pruner(optuna: Any, name: str | None, eval_every: int) -> Any:
    """``--pruner``: median (a member worse than the median of finished trials at the same step stops)
    or hyperband (successive halving brackets from one evaluation to the last); None: never."""
    if name is None:
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=eval_every, max_resource="auto")
    raise PipelineError(f"unknown pruner '{name}'; choose one of {', '.join(PRUNERS)}")


class OptunaSearch:
    """The study of one sweep folder, through the interface the round loop talks to."""

    def __init__(self, sweep_dir: Path, strategy: str, seed: int, higher: bool, space: Space, startup: int,
                 pruner_name: str | None = None, eval_every: int = 1):
        optuna = self.optuna = require(strategy)
        self.strategy, self.seed, self.startup = strategy, seed, startup
        self.encoding = Encoding(optuna, space)
        self.journal = held_journal(optuna, sweep_dir / JOURNAL)
        self.storage = optuna.storages.JournalStorage(self.journal)
        self.study = optuna.create_study(
            storage=self.storage, study_name=STUDY, direction="maximize" if higher else "minimize",
            sampler=self._sampler(0), pruner=pruner(optuna, pruner_name, eval_every), load_if_exists=True)
        self.study_id = self.storage.get_study_id_from_name(STUDY)
        # The steps each trial has reported (a killed attempt's included): a report is written once.
        self.reported = {t.number: set(t.intermediate_values) for t in self._trials()}
        self.ids: dict[int, int] = {}

    def _sampler(self, number: int) -> Any:
        seed = self.seed if self.strategy == "qmc" else int(np.random.SeedSequence([self.seed, number])
                                                             .generate_state(1)[0])
        return sampler(self.optuna, self.strategy, seed, self.startup)

    def _trials(self, states: tuple | None = None) -> list[Any]:
        return self.study.get_trials(deepcopy=False, states=states)

    def _point(self, frozen: Any) -> Point:
        return Point(frozen.number, self.encoding.decode(frozen.params), int(frozen.user_attrs.get("round", 0)))

    def asked(self) -> list[Point]:
        """Every trial asked so far, in order."""
        return [self._point(t) for t in self._trials()]

    def running(self) -> list[Point]:
        """Trials asked but not told: the round a killed sweep was in."""
        return [self._point(t) for t in self._trials((self.optuna.trial.TrialState.RUNNING,))]

    def ask(self, n: int, round: int = 0) -> list[Point]:
        """``n`` new trials, asked by one sampler seeded by the number of the first, and written to the
        journal together: a kill leaves all of them or none, so a resumed sweep asks the same."""
        points = []
        with self.together():
            self.study.sampler = self._sampler(len(self._trials()))
            for _ in range(n):
                trial = self.study.ask(self.encoding.distributions)
                trial.set_user_attr("round", round)
                points.append(Point(trial.number, self.encoding.decode(trial.params), round))
        return points

    def _frozen(self, number: int) -> Any:
        return self.storage.get_trial(self._trial_id(number))

    def _trial_id(self, number: int) -> int:
        if number not in self.ids:  # never changes: asked once of the storage (which reads the journal)
            self.ids[number] = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        return self.ids[number]

    def report(self, step: int, values: dict[int, float]) -> None:
        """One evaluation boundary's values (trial -> value at ``step``), written in one append; a value a
        killed attempt reported already (the same value) is kept."""
        with self.together():
            for trial, value in values.items():
                self._report(trial, step, value)

    def report_curve(self, trial: int, values: dict[int, float]) -> None:
        """One trial's values at each of its evaluations (step -> value), in one append."""
        with self.together():
            for step, value in sorted(values.items()):
                self._report(trial, step, value)

    def _report(self, trial: int, step: int, value: float) -> None:
        steps = self.reported.setdefault(trial, set())
        if step not in steps:
            self.storage.set_trial_intermediate_value(self._trial_id(trial), step, float(value))
            steps.add(step)

    def should_prune(self, trial: int, step: int) -> bool:
        """The pruner's verdict at ``step``, from the values reported up to that step."""
        frozen = self._frozen(trial)
        seen = {s: v for s, v in frozen.intermediate_values.items() if s <= step}
        view = self.optuna.trial.FrozenTrial(
            number=frozen.number, state=frozen.state, value=None, datetime_start=frozen.datetime_start,
            datetime_complete=None, params=frozen.params, distributions=frozen.distributions,
            user_attrs=frozen.user_attrs, system_attrs=frozen.system_attrs, intermediate_values=seen,
            trial_id=self._trial_id(trial))
        return bool(self.study.pruner.prune(self.study, view))

    def together(self) -> Any:
        """A block whose changes to the study reach the journal in one append (``optuna_journal``)."""
        return self.journal.hold()

    def tell(self, trial: int, value: float | None, pruned: bool = False) -> None:
        """A result: the selection metric at the member's selected step; ``pruned`` for a stopped member;
        no value (a member that diverged before any evaluation) fails the trial."""
        state = self.optuna.trial.TrialState
        if pruned:
            self.study.tell(trial, state=state.PRUNED)
        elif value is None or not math.isfinite(value):
            self.study.tell(trial, state=state.FAIL)
        else:
            self.study.tell(trial, float(value))

    def told(self) -> int:
        """Trials finished in the study (complete, pruned or failed)."""
        return len(self._trials()) - len(self.running())
