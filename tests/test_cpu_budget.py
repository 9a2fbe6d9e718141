"""bench.cpu_budget and the peers' use of it: budgets in CPU seconds, checked with a fake clock (no timing)."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from bench import peer_condinst, peer_yolo
from bench.cpu_budget import CpuBudget, tree_cpu_s


class FakeClock:
    """CPU seconds that advance only when told to."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_budget_counts_from_its_start_and_stops_at_n_cpu_seconds():
    clock = FakeClock(100.0)
    budget = CpuBudget(30, clock=clock)
    steps = 0
    while not budget.reached():
        clock.now += 7  # one training step costs 7 CPU seconds
        steps += 1
    assert steps == 5  # 4 steps = 28 s < 30; the 5th reaches 35
    assert budget.used() == 35 and budget.left() == -5 and budget.fraction() == 1.0
    clock.now = 100.0 + 15
    assert budget.fraction() == 0.5 and not budget.reached()


def test_budget_refuses_a_non_positive_budget():
    with pytest.raises(ValueError, match="must be > 0"):
        CpuBudget(0, clock=FakeClock())


def test_units_that_fit_scales_the_cost_so_far_to_the_whole_budget():
    budget = CpuBudget(480, clock=FakeClock())
    assert budget.units_that_fit(spent_s=60, units_done=3, ceiling=300) == 24  # 20 s per epoch
    assert budget.units_that_fit(spent_s=60, units_done=3, ceiling=10) == 10
    assert budget.units_that_fit(spent_s=600, units_done=3, ceiling=300) == 3  # never fewer than already done
    assert budget.units_that_fit(spent_s=0, units_done=0, ceiling=300) == 300


def test_tree_cpu_counts_a_finished_child():
    before = tree_cpu_s()
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], check=True)
    assert tree_cpu_s() - before > 0.05  # the child's CPU seconds, reaped


def test_condinst_iterations_fit_what_the_probe_left():
    # probe: 10 iterations, 50 s wall, 80 CPU s (1.6 cores busy); its last step took 4 s wall = 6.4 CPU s
    iters, step_cpu = peer_condinst.iterations_for_budget(480, probe_wall_s=50, probe_cpu_s=80, step_wall_s=4)
    assert step_cpu == pytest.approx(6.4)
    startup = 80 - 10 * 6.4  # 16 CPU s paid again by the real run
    assert iters == int((480 - 80 - startup) / 6.4) == 60
    assert peer_condinst.iterations_for_budget(60, 50, 80, 4)[0] == 10  # at least the probe's length


class FakeTrainer(SimpleNamespace):
    def _setup_scheduler(self):
        self.scheduler = SimpleNamespace(last_epoch=None, epochs=self.epochs)


def test_yolo_epochs_refit_to_the_cpu_budget_and_stop_there():
    clock = FakeClock(0.0)
    budget = CpuBudget(100, clock=clock)
    trainer = FakeTrainer(epoch=0, start_epoch=0, epochs=300, args=SimpleNamespace(epochs=300, time=1.0),
                          train_time_start=__import__("time").time(), stop=False)
    clock.now = 20  # the first epoch cost 20 CPU s: 5 fit
    peer_yolo._refit_epochs(trainer, budget, max_epochs=300)
    assert (trainer.epochs, trainer.args.epochs, trainer.scheduler.epochs) == (5, 5, 5)
    assert trainer.scheduler.last_epoch == 0 and trainer.stop is False
    trainer.epoch, clock.now = 3, 80
    peer_yolo._refit_epochs(trainer, budget, max_epochs=300)
    assert trainer.epochs == 5 and trainer.stop is False
    trainer.epoch, clock.now = 4, 99
    peer_yolo._refit_epochs(trainer, budget, max_epochs=300)
    assert trainer.stop is True  # 5 epochs done
    trainer.stop, clock.now = False, 100
    peer_yolo._stop_at_budget(trainer, budget)
    assert trainer.stop is True  # mid-epoch: the budget is spent
