"""The fused step of a pack (docs/packing.md): K trials of one architecture trained as one
model array, as HFTA (Wang et al., MLSys 2021) fuses the repeated jobs of a sweep.

- `Stack`: the K modules' parameters and buffers live in stacked tensors, (K, *shape) each.
  Every module's own Parameters and buffers are views of them (their `.data`), so a step
  copies no weights, and each trial's module, `state_dict()` and checkpoint stay its own.
  One `torch.func.vmap` of `functional_call` runs the K modules as one (a convolution over
  stacked weights runs as one grouped convolution).
- `StackedAdam`: the K trials' `torch.optim.Adam`s as one, with each trial's lr, betas and
  eps as (K,) tensors over the stacked state (step, exp_avg, exp_avg_sq). Each trial's own
  optimiser state points at its views, so its `state_dict()` is the solo one and its own
  `step()` (the loop executor) continues the same state. On a CPU the arithmetic is, bitwise,
  that of torch's single-tensor Adam (tests/unit/test_fused.py).
- `FusedPack`: the stacks and optimisers of one member set, and its step (`classifier_step`,
  `gan_step`). `release()` gives every module and optimiser state its own storage again,
  before the members change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn import functional as F
from torch.nn.utils import parametrize

from workers.trainer.recipes import ClassifierRecipe, GanRecipe, Recipe

Losses = dict[str, Tensor]


class Stack:
    """K modules of one architecture whose parameters and buffers are views of stacked
    tensors, called as one by `stack(*inputs)`. BatchNorm's running statistics are updated in
    place in the stacked buffers, so in each module's own. Raises ValueError for parametrized
    modules (spectral norm)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        if any(parametrize.is_parametrized(m) for module in modules for m in module.modules()):
            # Spectral norm's power iteration writes its vectors with out= ops, which vmap
            # cannot batch: such models step by the loop executor.
            raise ValueError("the fused step does not train parametrized (spectral norm) models")
        self.modules, self.base = list(modules), modules[0]
        owned = [dict(m.named_parameters()) for m in self.modules]
        self.params = {
            name: torch.stack([p[name].detach() for p in owned]).requires_grad_()
            for name in owned[0]
        }
        held = [dict(m.named_buffers()) for m in self.modules]
        self.buffers = {name: torch.stack([b[name] for b in held]) for name in held[0]}
        for i, (params, buffers) in enumerate(zip(owned, held, strict=True)):
            for name, p in params.items():
                p.data = self.params[name].detach()[i]
            for name, b in buffers.items():
                b.data = self.buffers[name][i]

    def parameter_of(self, i: int, name: str) -> nn.Parameter:
        """Module i's own Parameter called `name` (a view of self.params[name][i])."""
        return self.modules[i].get_parameter(name)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def __call__(self, *inputs: Tensor | None, detach: bool = False) -> Tensor:
        """inputs: (K, N, ...) each; None ones (an unconditional model's label) are left out.
        `detach`: the parameters as constants (no gradient reaches them)."""
        given = tuple(x for x in inputs if x is not None)
        params = {n: p.detach() for n, p in self.params.items()} if detach else self.params

        def one(p: dict[str, Tensor], b: dict[str, Tensor], *xs: Tensor) -> Tensor:
            return functional_call(self.base, (p, b), xs)

        return vmap(one)(params, self.buffers, *given)

    def release(self) -> None:
        """Each module's parameters and buffers in storage of their own again."""
        with torch.no_grad():
            for module in self.modules:
                for t in (*module.parameters(), *module.buffers()):
                    t.data = t.data.clone()


class StackedAdam:
    """`optimizers[i]` (a plain torch.optim.Adam over `stack.modules[i]`'s parameters) for
    every i at once. Raises ValueError for any other optimiser (weight decay, AMSGrad,
    maximize, several parameter groups): those are trained by the loop executor."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], stack: Stack) -> None:
        groups = [_plain_adam(opt) for opt in optimizers]

        def each(pick: str) -> Tensor:  # per-trial scalars stay on the host, as Adam's steps
            return torch.tensor([float(g[pick]) for g in groups], dtype=torch.float64)

        self.lr, self.eps = each("lr"), each("eps")
        betas = torch.tensor([g["betas"] for g in groups], dtype=torch.float64)
        self.beta1, self.beta2 = betas[:, 0], betas[:, 1]
        self.stack, self.optimizers = stack, list(optimizers)
        self.step_t: dict[str, Tensor] = {}
        self.exp_avg: dict[str, Tensor] = {}
        self.exp_avg_sq: dict[str, Tensor] = {}
        for name, stacked in stack.params.items():
            states = [
                _state_of(opt, stack.parameter_of(i, name)) for i, opt in enumerate(self.optimizers)
            ]
            self.step_t[name] = torch.stack([s["step"] for s in states])
            self.exp_avg[name] = torch.stack([s["exp_avg"] for s in states])
            self.exp_avg_sq[name] = torch.stack([s["exp_avg_sq"] for s in states])
            assert self.exp_avg[name].shape == stacked.shape
            for i, state in enumerate(states):
                state["step"] = self.step_t[name][i]
                state["exp_avg"] = self.exp_avg[name][i]
                state["exp_avg_sq"] = self.exp_avg_sq[name][i]

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step of every trial (torch's `_single_tensor_adam`, its scalars per trial:
        float64 bias corrections, cast to float32 where torch casts them)."""
        for name, param in self.stack.params.items():
            grad = param.grad
            if grad is None:  # as torch: a parameter without a gradient is not stepped
                continue
            step_t = self.step_t[name]
            step_t += 1
            step = step_t.double()
            beta1, beta2 = self.beta1, self.beta2
            scalars = torch.stack(
                [1 - beta1, beta2, 1 - beta2, (1 - beta2**step) ** 0.5, self.eps,
                 -self.lr / (1 - beta1**step)]
            )  # fmt: skip
            shape = (-1,) + (1,) * (param.dim() - 1)
            on_device = scalars.to(torch.float32).to(param.device, non_blocking=True)
            weight1, decay2, weight2, correction2_sqrt, eps, step_size = (
                s.view(shape) for s in on_device.unbind()
            )
            exp_avg, exp_avg_sq = self.exp_avg[name], self.exp_avg_sq[name]
            exp_avg.lerp_(grad, weight1)
            exp_avg_sq.mul_(decay2).addcmul_(grad * weight2, grad)
            denom = (exp_avg_sq.sqrt() / correction2_sqrt).add_(eps)
            param.add_(step_size * exp_avg / denom)

    def release(self) -> None:
        """Each optimiser's state in storage of its own again."""
        for opt in self.optimizers:
            for state in opt.state.values():
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    state[key] = state[key].clone()


def _plain_adam(opt: torch.optim.Optimizer) -> dict[str, Any]:
    group = opt.param_groups[0] if len(opt.param_groups) == 1 else {}
    plain = (
        type(opt) is torch.optim.Adam
        and group
        and not group["weight_decay"]
        and not group["amsgrad"]
        and not group["maximize"]
        and not group["capturable"]
        and not group["differentiable"]
        and not group["fused"]
        and not torch.is_tensor(group["lr"])
    )
    if not plain:
        raise ValueError(f"the fused step trains plain Adam only, not {opt!r}")
    return group


def _state_of(opt: torch.optim.Optimizer, param: nn.Parameter) -> dict[str, Tensor]:
    """`opt`'s state for `param`, made as torch.optim.Adam makes it on its first step."""
    state = opt.state[param]
    if not state:
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return state


class FusedPack:
    """The fused step of one member set: `recipes` (all ClassifierRecipe, or all fast-mode
    GanRecipe without micro-batches) with their modules stacked and their Adams stacked.
    Raises ValueError if they cannot be fused."""

    def __init__(self, recipes: Sequence[Recipe]) -> None:
        self.recipes = list(recipes)
        self.stacks: list[Stack] = []
        self.adams: list[StackedAdam] = []
        try:
            if all(isinstance(r, ClassifierRecipe) for r in recipes):
                self._add(
                    [r.model for r in self.classifiers], [r.optimizer for r in self.classifiers]
                )
            elif all(isinstance(r, GanRecipe) and not r.book for r in recipes):
                self._add([r.D for r in self.gans], [r.opt_d for r in self.gans])
                self._add([r.G for r in self.gans], [r.opt_g for r in self.gans])
            else:
                raise ValueError("the fused step trains classifiers or fast-mode GANs")
        except Exception:
            self.release()
            raise

    @property
    def classifiers(self) -> list[ClassifierRecipe]:
        return [r for r in self.recipes if isinstance(r, ClassifierRecipe)]

    @property
    def gans(self) -> list[GanRecipe]:
        return [r for r in self.recipes if isinstance(r, GanRecipe)]

    def _add(self, modules: list[nn.Module], optimizers: list[torch.optim.Optimizer]) -> None:
        stack = Stack(modules)
        self.stacks.append(stack)
        self.adams.append(StackedAdam(optimizers, stack))

    def step(self, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> list[Losses]:
        """One optimiser step of every trial, trial i on (xs[i], ys[i]) (one batch size)."""
        if self.classifiers:
            return classifier_step(self, xs, ys)
        return gan_step(self, xs, ys)

    def free_own_grads(self) -> None:
        """Drop the gradients the trials' own train_steps left (the loop executor's, timed
        by auto): the fused step's are on the stacks."""
        for adam in self.adams:
            for opt in adam.optimizers:
                opt.zero_grad(set_to_none=True)

    def release(self) -> None:
        for adam in self.adams:
            adam.release()
        for stack in self.stacks:
            stack.release()


def _bce(out: Tensor, target: Tensor | float) -> Tensor:
    """(K,) each trial's mean BCE, as its recipe's nn.BCELoss() would give it."""
    target = target.expand_as(out) if isinstance(target, Tensor) else torch.full_like(out, target)
    return F.binary_cross_entropy(out, target, reduction="none").flatten(1).mean(1)


def _stack_of(parts: Sequence[Tensor | None]) -> Tensor | None:
    return None if parts[0] is None else torch.stack([p for p in parts if p is not None])


def classifier_step(pack: FusedPack, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> list[Losses]:
    """ClassifierRecipe.train_step of every trial at once (no micro-batches)."""
    recipes, (net,), (adam,) = pack.classifiers, pack.stacks, pack.adams
    net.base.train()
    net.zero_grad()
    x = torch.stack([r.prepare(x) for r, x in zip(recipes, xs, strict=True)])
    target = torch.stack(
        [F.one_hot(y, r.outputs).float() for r, y in zip(recipes, ys, strict=True)]
    )
    loss = _bce(net(x), target)
    loss.sum().backward()  # each trial's gradient is its own loss's: the sum separates
    adam.step()
    return [{"loss": each} for each in loss.detach().unbind()]


def _augment_each(recipes: Sequence[GanRecipe], images: Tensor) -> Tensor:
    """Each trial's DiffAugment draw (from its own generator) on its own images."""
    if not any(r.tricks.augment for r in recipes):
        return images
    return torch.stack([r._augment(x) for r, x in zip(recipes, images.unbind(), strict=True)])


def gan_step(pack: FusedPack, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> list[Losses]:
    """GanRecipe's fast train_step of every trial at once (no micro-batches): D on real and
    on G(z).detach(), each trial's D update, then G through the updated D, each trial's G
    update and EMA. Each trial's draws come from its own generator, in its solo order
    (latents, labels, then the augmentation of real, fake, and fake again for G)."""
    recipes, (d, g), (adam_d, adam_g) = pack.gans, pack.stacks, pack.adams
    n = len(xs[0])
    if any(r.micro < n for r in recipes):
        raise ValueError("the fused GAN step trains without micro-batches only")
    d.base.train()
    g.base.train()
    zs = [r._seed(n) for r in recipes]
    fake_labels = [r._random_labels(n) for r in recipes]
    z, fake_label = torch.stack(zs), _stack_of(fake_labels)
    fake_cond = _stack_of(
        [r._fake_condition(zk, lk) for r, zk, lk in zip(recipes, zs, fake_labels, strict=True)]
    )
    real_cond = _stack_of([r._real_condition(y) for r, y in zip(recipes, ys, strict=True)])
    d.zero_grad()
    fake = g(z, fake_label)
    real = _augment_each(
        recipes, torch.stack([r.prepare(x) for r, x in zip(recipes, xs, strict=True)])
    )
    out_real = d(real, real_cond)
    out_fake = d(_augment_each(recipes, fake.detach()), fake_cond)
    smooth = torch.tensor([r.tricks.real_label for r in recipes], device=out_real.device)
    d_loss = _bce(out_real, smooth.view(-1, 1, 1)) + _bce(out_fake, 0.0)
    d_loss.sum().backward()
    adam_d.step()
    g.zero_grad()
    # G through the updated D; D's parameters as constants (solo's gradients into D are
    # thrown away by its next zero_grad), its BatchNorm statistics updated as solo.
    g_loss = _bce(d(_augment_each(recipes, fake), fake_cond, detach=True), 1.0)
    g_loss.sum().backward()
    adam_g.step()
    for r in recipes:
        r._update_ema()
    d_real, d_fake = out_real.detach().flatten(1).mean(1), out_fake.detach().flatten(1).mean(1)
    parts = zip(d_loss.detach(), g_loss.detach(), d_real, d_fake, strict=True)
    return [{"d_loss": dl, "g_loss": gl, "d_real": dr, "d_fake": df} for dl, gl, dr, df in parts]
