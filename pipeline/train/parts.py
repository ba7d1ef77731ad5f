"""The parts of a training session that code outside ``train/`` builds with: the benchmark suite
times them one by one, and tests check them one by one.

``prepare`` makes a config ready on the devices, ``open_feed`` gives each call's batches,
``solo_programs`` / ``vmapped_programs`` compile the steps, and the populations step members
with them; ``create_state`` and ``train_step`` are the state and the pure step themselves.
Everything else in ``train/`` is the session's own business and may change shape freely.
"""

from pipeline.train.population import SoloPopulation, VmapPopulation, stack
from pipeline.train.prepare import Prepared, prepare
from pipeline.train.programs import Programs, solo_programs, vmapped_programs
from pipeline.train.session import open_feed
from pipeline.train.state import create_state
from pipeline.train.step import train_step
from pipeline.train.steps_per_call import choose_steps_per_call

__all__ = ["Prepared", "Programs", "SoloPopulation", "VmapPopulation", "choose_steps_per_call", "create_state",
           "open_feed", "prepare", "solo_programs", "stack", "train_step", "vmapped_programs"]
