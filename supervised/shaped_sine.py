"""Loss shaping on the sine frequency (paper Sec. IV.B.1, Fig. 5a-b): ``ml3 shaped-sine``.

The optimizee f_w(x) = sin(w x) has one parameter; the data are y = sin(v x), x ~ U[-1, 1], N = 1000.
The MSE over w has a local minimum about every period of the data (Parascandolo et al.), so SGD on it
reaches v only from a neighbourhood of v. ML3 learns a per-sample loss M_phi(x, y_pred, y) (Eq. 3) and is
meta-trained (Alg. 1) twice: with the MSE on held-out points as task loss ("unshaped"), and with the
*shaping* task loss (w - v)^2, which reads the true frequency at meta-train time only. At meta-test (Alg. 2)
every loss sees only data: SGD from a grid of initial w, on train frequencies and held-out frequencies.

Sign: x is symmetric about 0 and sin is odd, so sin(-v x) = -sin(v x); w = -v predicts -y, the MSE's
*maximum* direction, not a second solution (v = 0 is the only frequency with two readings). A per-sample
loss can solve the task for every v: where |x| < pi / (2 max|w|), arcsin is one-to-one on w x, so weighting
the residual towards small |x| gives a landscape with one basin at v. Hence ML3 can generalise to unseen v.

Meta-training runs ``batch_tasks`` optimizees (v, w_0) side by side: ``w`` then has shape (B, 1) and x, y
shape (B, N, 1); the learned loss is scaled by B so that each optimizee's inner step is its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from sb3_ml3.atomic import jsonable
from sb3_ml3.functional import make_meta_optimizer
from sb3_ml3.meta_loss import MetaLoss
from sb3_ml3.supervised.core import Task, learned_loss_fn, meta_test, meta_train, mse, run_seeds, task_loss_fn

VARIANTS = ("shaped", "unshaped", "mse")
LABELS = {"shaped": "ML3, shaping task loss (w - v)^2", "unshaped": "ML3, MSE task loss", "mse": "SGD on MSE"}
COLORS = {"shaped": "tab:green", "unshaped": "tab:blue", "mse": "tab:orange"}


@dataclass
class ShapedSineConfig:
    """Settings of the shaped-sine experiment (the paper gives N = 1000 and x in [-1, 1]; the rest is ours)."""

    n_outer: int = 3000  # outer iterations per meta-loss
    inner_lr: float = 30.0  # alpha; also the meta-test SGD step of both learned losses
    mse_lr: float = 1.0  # SGD step on the MSE (stable below ~3; its success rate is flat in [0.3, 3])
    meta_lr: float = 3e-3  # eta (Adam), decayed to meta_lr_final on a cosine
    meta_lr_final: float = 3e-4
    test_steps: int = 100  # SGD steps at meta-test
    n_points: int = 1000  # N: points of each meta-test task (the paper's data set)
    meta_train_points: int = 250  # points per meta-train task (and as many held-out points for the MSE task loss)
    batch_tasks: int = 64  # optimizees (v, w_0) per outer step: fewer give too noisy a meta-gradient
    inner_steps: int = 1  # K unrolled steps per outer step
    reset_every: int = 5  # M: inner steps before the optimizees and frequencies are drawn afresh
    near_fraction: float = 0.8  # meta-train optimizees that start near v (the rest: w_0 ~ U[init_range])
    near_scale: float = 0.2  # their w_0 = v + near_scale * N(0, 1)
    first_order: bool = False
    max_grad_norm: float | None = None
    train_frequency_range: tuple[float, float] = (-6.0, 6.0)  # v ~ U[range] minus the held-out bands
    test_frequencies: tuple[float, ...] = (-4.7, -2.2, -0.9, 1.6, 3.3, 5.4)  # held out: never meta-trained on
    holdout_margin: float = 0.25  # no train v within this of a held-out v
    train_eval_frequencies: tuple[float, ...] = (-5.5, -3.6, -1.4, 0.6, 2.7, 4.4)  # meta-test on train v's
    init_range: tuple[float, float] = (-7.0, 7.0)  # initial w, uniform at meta-train, a grid at meta-test
    n_init: int = 57  # meta-test grid of initial w (step 0.25 on [-7, 7])
    tolerance: float = 0.05  # success: |w - v| < tolerance after test_steps
    meta_hidden_sizes: tuple[int, ...] = (40, 40)
    meta_output: str = "softplus"  # output transform of the "mlp" form
    meta_form: str = "quadratic"  # "mlp": M_phi an MLP of (x, y_pred, y); "quadratic": see make_meta_loss
    landscape_points: int = 141  # w grid of the landscape figure (step 0.1 on [-7, 7])

    def __post_init__(self) -> None:
        sizes = ("n_points", "meta_train_points", "batch_tasks", "inner_steps", "reset_every", "n_init", "landscape_points")
        bad = [f"{k}={getattr(self, k)}" for k in sizes if int(getattr(self, k)) < 1]
        if bad or self.n_outer < 0 or self.test_steps < 0:
            raise ValueError(f"Need positive sizes and non-negative n_outer/test_steps; fix {bad or 'n_outer/test_steps'}.")
        if self.meta_form not in ("mlp", "quadratic"):
            raise ValueError(f"meta_form must be 'mlp' or 'quadratic', got {self.meta_form!r}.")
        if not 0 <= self.near_fraction <= 1 or self.near_scale < 0:
            raise ValueError(f"near_fraction must lie in [0, 1] and near_scale be >= 0, got {self.near_fraction}, "
                             f"{self.near_scale}.")
        for name in ("inner_lr", "mse_lr", "meta_lr", "meta_lr_final", "tolerance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        for name in ("train_frequency_range", "init_range"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name} must be (low, high) with low < high, got {(lo, hi)}.")
        if not self.test_frequencies or not self.train_eval_frequencies:
            raise ValueError("Give at least one held-out and one train frequency to meta-test on.")
        if self.holdout_margin < 0:
            raise ValueError(f"holdout_margin must be >= 0, got {self.holdout_margin}.")
        if self.train_allowed_length() <= 0:
            raise ValueError("The held-out bands cover the whole train_frequency_range: shrink holdout_margin.")
        lo, hi = self.train_frequency_range
        for v in self.train_eval_frequencies:
            near = [t for t in self.test_frequencies if abs(v - t) <= self.holdout_margin]
            if near or not lo <= v <= hi:
                raise ValueError(f"train_eval_frequencies must lie in train_frequency_range {(lo, hi)} and farther "
                                 f"than holdout_margin={self.holdout_margin} from the held-out {near or 'range'}; got {v}.")

    def train_allowed_length(self) -> float:
        """Length of the train-frequency set: the range minus the held-out bands (merged where they overlap)."""
        lo, hi = self.train_frequency_range
        bands = sorted((max(lo, t - self.holdout_margin), min(hi, t + self.holdout_margin)) for t in self.test_frequencies)
        covered, end = 0.0, lo
        for a, b in bands:
            a = max(a, end)
            if b > a:
                covered, end = covered + b - a, b
        return hi - lo - covered


class SineFrequency(nn.Module):
    """The optimizee f_w(x) = sin(w x) with one parameter ``w`` (shape (1,), or (B, 1) for B optimizees)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-1] != 1:
            raise ValueError(f"x must have shape (..., N, 1), got {tuple(x.shape)}.")
        if self.w.dim() > 1 and tuple(x.shape[:-2]) != tuple(self.w.shape[:-1]):
            raise ValueError(f"B optimizees w {tuple(self.w.shape)} need x of shape (B, N, 1), got {tuple(x.shape)}.")
        return torch.sin(self.w.unsqueeze(-2) * x)


def x_prediction_target(prediction: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The meta-loss inputs (x, y_pred, y): the loss may weight samples by where they are."""
    return batch[0], prediction, batch[1]


def shaping_loss(params: dict[str, torch.Tensor], query: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The shaping task loss (w - v)^2, v = query[2]: extra information used at meta-train time only."""
    return ((params["w"] - query[2]) ** 2).mean()


def sample_train_frequencies(config: ShapedSineConfig, n: int, generator: torch.Generator) -> torch.Tensor:
    """n frequencies v ~ U[train_frequency_range], redrawn while within holdout_margin of a held-out one."""
    lo, hi = config.train_frequency_range
    held_out = torch.tensor(config.test_frequencies)
    v = torch.empty(n)
    todo = torch.ones(n, dtype=torch.bool)
    while bool(todo.any()):
        v[todo] = torch.rand(int(todo.sum()), generator=generator) * (hi - lo) + lo
        todo = (v[:, None] - held_out).abs().le(config.holdout_margin).any(1)
    return v


def sine_data(v: torch.Tensor, n_points: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ U[-1, 1] and y = sin(v x) for each frequency: shapes (len(v), n_points, 1)."""
    x = torch.rand(len(v), n_points, 1, generator=generator) * 2 - 1
    return x, torch.sin(v.view(-1, 1, 1) * x)


def make_meta_loss(config: ShapedSineConfig, variant: str, generator: torch.Generator) -> MetaLoss:
    """M_phi(x, y_pred, y): an MLP of all three (``"mlp"``, the paper's form), or ``"quadratic"``.

    The quadratic form is M = w_phi(x, y) (y_pred - y - t_phi(x, y))^2: a learned per-sample weight and
    offset, t_phi starting at zero (so the loss starts as a weighted MSE with its minimum at y_pred = y).
    """
    metadata = {"experiment": "shaped-sine", "variant": variant, "config": jsonable(asdict(config))}
    if config.meta_form == "quadratic":
        meta_loss = MetaLoss("x:1, y_pred:1, y:1", hidden_sizes=config.meta_hidden_sizes, output="identity",
                             quadratic=("y_pred",), quadratic_reference={"y_pred": "y"}, metadata=metadata)
        meta_loss.reset_parameters(generator)
        with torch.no_grad():
            meta_loss.net[-1].weight[0].zero_()  # t_phi = 0 at initialisation
    else:
        meta_loss = MetaLoss("x:1, y_pred:1, y:1", hidden_sizes=config.meta_hidden_sizes, output=config.meta_output,
                             metadata=metadata)
        meta_loss.reset_parameters(generator)
    return meta_loss


class ShapedSineExperiment:
    """Meta-trains the shaped and the unshaped loss per seed and meta-tests them beside SGD on the MSE."""

    def __init__(self, config: ShapedSineConfig | None = None) -> None:
        self.config = config or ShapedSineConfig()
        self.optimizee = SineFrequency()
        self.meta_template = make_meta_loss(self.config, "template", torch.Generator().manual_seed(0))
        per_optimizee = learned_loss_fn(self.optimizee, self.meta_template, inputs=x_prediction_target)
        scale = float(self.config.batch_tasks)
        # mean over B optimizees times B: each w_b takes the step its own learned loss gives
        self.learned_loss = lambda params, phi, batch: scale * per_optimizee(params, phi, batch)
        self.task_losses = {"shaped": shaping_loss, "unshaped": task_loss_fn(self.optimizee, mse)}

    def meta_train_variant(self, variant: str, generator: torch.Generator,
                           progress: Callable[[int], None] | None = None) -> tuple[MetaLoss, list[float]]:
        """Alg. 1 with B optimizees per step; frequencies, w_0 and data are redrawn every ``reset_every`` steps."""
        cfg = self.config
        meta_loss = make_meta_loss(cfg, variant, generator)
        lo, hi = cfg.init_range
        current: dict[str, Any] = {}

        def init_fn(g: torch.Generator) -> dict[str, torch.Tensor]:
            # theta_0 and its task together: v, the data, and w_0 (uniform, or near v to learn the minimum's place)
            v = sample_train_frequencies(cfg, cfg.batch_tasks, g)
            x, y = sine_data(v, cfg.meta_train_points, g)
            xq, yq = sine_data(v, cfg.meta_train_points, g)
            current["batch"], current["query"] = (x, y), (xq, yq, v.view(-1, 1))
            w = torch.rand(cfg.batch_tasks, generator=g) * (hi - lo) + lo
            near = torch.rand(cfg.batch_tasks, generator=g) < cfg.near_fraction
            w = torch.where(near, v + cfg.near_scale * torch.randn(cfg.batch_tasks, generator=g), w)
            return {"w": w.view(-1, 1)}

        def task_fn(iteration: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
            return current["batch"], current["query"]  # meta_train calls init_fn first at every reset

        optimizer = make_meta_optimizer(meta_loss.parameters(), cfg.meta_lr)
        # cosine decay of eta to meta_lr_final: the last outer steps refine where the basin's minimum lies
        final = cfg.meta_lr_final / cfg.meta_lr
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(i / max(cfg.n_outer, 1), 1.0))))

        def step_done(iteration: int) -> None:
            schedule.step()
            if progress is not None:
                progress(iteration)

        result = meta_train(meta_loss, self.learned_loss, self.task_losses[variant], init_fn=init_fn, task_fn=task_fn,
                            n_outer=cfg.n_outer, inner_lr=cfg.inner_lr, meta_lr=cfg.meta_lr, generator=generator,
                            inner_steps=cfg.inner_steps, reset_every=cfg.reset_every, first_order=cfg.first_order,
                            max_grad_norm=cfg.max_grad_norm, progress=step_done, meta_optimizer=optimizer)
        if result.skipped_steps:
            print(f"shaped-sine {variant}: {result.skipped_steps} meta-steps skipped ({result.skipped_reasons[:3]})")
        return meta_loss, result.task_loss

    def evaluate(self, meta_loss: MetaLoss | None, frequencies: Sequence[float], generator: torch.Generator) -> torch.Tensor:
        """Alg. 2 from every initial w of the grid on each frequency: signed errors w_t - v, (n_v, n_init, steps + 1)."""
        cfg = self.config
        v = torch.tensor(frequencies, dtype=torch.float32)
        x, y = sine_data(v, cfg.n_points, generator)
        grid = torch.linspace(*cfg.init_range, cfg.n_init)
        tasks = [Task((x[i], y[i]), (x[i], y[i], v[i].view(1))) for i in range(len(v)) for _ in range(cfg.n_init)]
        inits = {"w": grid.repeat(len(v)).view(-1, 1)}
        lr = cfg.mse_lr if meta_loss is None else cfg.inner_lr
        trace = meta_test(self.optimizee, meta_loss, tasks, inits, lr, cfg.test_steps,
                          inputs=x_prediction_target, metric_fn=lambda p, q: (p["w"] - q[2]).sum())
        return trace.view(len(v), cfg.n_init, cfg.test_steps + 1)

    def landscape(self, meta_loss: MetaLoss | None, frequencies: Sequence[float], generator: torch.Generator) -> torch.Tensor:
        """The loss (learned, or MSE if ``meta_loss`` is None) over a grid of w for each frequency: (n_v, points)."""
        cfg = self.config
        v = torch.tensor(frequencies, dtype=torch.float32)
        xs, ys = sine_data(v, cfg.n_points, generator)
        w = torch.linspace(*cfg.init_range, cfg.landscape_points).view(-1, 1, 1)
        rows = []
        with torch.no_grad():
            for x, y in zip(xs, ys):  # one frequency at a time: (points, N, 1) samples
                pred = torch.sin(w * x)
                target, inputs = y.expand_as(pred), x.expand_as(pred)
                loss = (pred - target) ** 2 if meta_loss is None else meta_loss(inputs, pred, target)
                rows.append(loss.reshape(len(w), -1).mean(-1))
        return torch.stack(rows)

    def run_seed(self, seed: int, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        cfg = self.config
        generator = torch.Generator().manual_seed(seed)
        losses: dict[str, MetaLoss | None] = {"mse": None}
        out: dict[str, Any] = {"seed": seed}
        for variant in ("shaped", "unshaped"):
            losses[variant], out[f"meta_train_task_loss_{variant}"] = self.meta_train_variant(variant, generator, progress)
        eval_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        for split, freqs in (("test", cfg.test_frequencies), ("train", cfg.train_eval_frequencies)):
            for variant in VARIANTS:  # the same data for every loss: the generator restarts per loss
                errors = self.evaluate(losses[variant], freqs, torch.Generator().manual_seed(eval_seed))
                final = errors[..., -1].abs()
                out[f"success_{split}_{variant}"] = float((final < cfg.tolerance).float().mean())
                out[f"success_per_v_{split}_{variant}"] = (final < cfg.tolerance).float().mean(1).tolist()
                out[f"trace_{split}_{variant}"] = errors.abs().mean((0, 1)).tolist()  # mean |w_t - v|
                if split == "test":
                    out[f"trajectories_{variant}"] = errors[0].tolist()  # w_t - v from each w_0, first held-out v
        for variant in VARIANTS:
            out[f"landscape_{variant}"] = self.landscape(losses[variant], cfg.test_frequencies,
                                                         torch.Generator().manual_seed(eval_seed)).tolist()
        out["meta_losses"] = {k: v for k, v in losses.items() if v is not None}
        return out

    def run(self, seeds: Sequence[int], progress: bool = False) -> dict[str, Any]:
        """All seeds, JSON-ready but for ``"meta_losses"`` ({(seed, variant): MetaLoss}); Ctrl-C keeps finished seeds."""
        per_seed, interrupted_at = run_seeds(seeds, self.run_seed, 2 * self.config.n_outer,
                                             "ml3 shaped-sine: meta-train", progress)
        meta_losses = {(r["seed"], k): m for r in per_seed for k, m in r.pop("meta_losses").items()}
        summary: dict[str, Any] = {"seeds": [r["seed"] for r in per_seed]}
        for split in ("test", "train"):
            for variant in VARIANTS:
                values = [r[f"success_{split}_{variant}"] for r in per_seed]
                summary[f"mean_success_{split}_{variant}"] = sum(values) / len(values)
                summary[f"min_success_{split}_{variant}"] = min(values)
        summary["goal_met_held_out"] = all(r["success_test_shaped"] >= 0.9 for r in per_seed)
        results = {"experiment": "shaped-sine", "config": jsonable(asdict(self.config)), "summary": summary,
                   "per_seed": per_seed, "meta_losses": meta_losses, "partial": interrupted_at is not None}
        if interrupted_at is not None:
            results["interrupted_at_seed"] = int(interrupted_at)
            results["requested_seeds"] = list(seeds)
        return results


def run_shaped_sine(seeds: Sequence[int] = (0, 1, 2, 3, 4), config: ShapedSineConfig | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Run the shaped-sine experiment (see :class:`ShapedSineExperiment`)."""
    return ShapedSineExperiment(config).run(seeds, progress=progress)


__all__ = ["ShapedSineConfig", "ShapedSineExperiment", "SineFrequency", "run_shaped_sine", "shaping_loss",
           "sample_train_frequencies", "sine_data", "x_prediction_target", "VARIANTS", "LABELS", "COLORS"]
