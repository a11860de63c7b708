"""Subnormal floats in the Pyro backend: where they come from and how they are kept out.

A float32 is *subnormal* when ``0 < |x| < torch.finfo(torch.float32).tiny`` (1.18e-38). On
x86 CPUs an instruction that reads or writes one takes a microcode assist (on the order of a
hundred cycles instead of one). A matrix product reuses every input element hundreds of
times, so a few percent of subnormal entries in one operand make it ten to twenty times
slower; an elementwise pass pays once per subnormal entry.

They came from two places, both growing as training goes on (issue 14):

1. **The mixture log-density's gradient.** The gradient of ``logsumexp_k c_nk`` with
   respect to component k is weighted by the responsibilities
   ``r_nk = exp(c_nk - logsumexp_j c_nj)`` (the ``exp`` in ``logsumexp``'s backward). A
   component whose log-density is 87 to 103 nats below the best one at every point of the
   batch gets responsibilities between 1.4e-45 and 1.2e-38, all subnormal, and so is its
   whole gradient. In the VampPrior the components are the encoder's outputs at the K
   pseudo-inputs, so that gradient ran backwards through the encoder's pass over the
   pseudo-inputs (the input- and weight-gradient matrix products of every layer, the gates'
   derivatives, the hardtanh) into the pseudo-inputs' gradient and Adam. As the components
   sharpen, more of them sit that far from a whole batch: on Frey Faces (K = 500) the epoch
   took 0.5 s at epoch 1, 2.2 s at 40 and 4 s at 60, nearly all of it in those matrix
   products. :func:`flush_negligible_grad`, applied by the VampPrior and the
   mixture-of-Gaussians prior to their component parameters, is the identity forward and
   zeroes gradient entries below :func:`negligible_threshold` (``2^-100``) backward, so
   nothing subnormal reaches the encoder or the optimiser; every other gradient passes bit
   for bit.
2. **Adam's moments of parameters whose gradient is exactly zero**, above all pseudo-input
   pixels that have left the hardtanh's [0, 1]: the first moment decays by 0.9 a step into
   the subnormal range and sticks there (at four times the smallest subnormal
   ``m + 0.1 (0 - m)`` rounds back to ``m``), to be read by every later step. On static
   MNIST (pseudo-inputs initialised near 0) the epoch grew 20% in 40 epochs this way.
   :func:`keep_optimizer_state_normal` zeroes them every 100 steps; it needs the training
   loop to register it on its optimizer.

No global switch is touched, and both work in every torch thread.

A third slow path is not made of subnormals and no flush-to-zero mode removes it: torch's
CPU ``exp`` leaves its vector code for float32 arguments below about -87, where the result
underflows, and is then 80-200 times slower (measured on 78,400 floats: 14 us for arguments
in [-10, 0], 1.2-2.9 ms below -88, the same with ``torch.set_flush_denormal(True)``; XLA's
``exp`` takes 33 us everywhere). The mixture log-sum-exp evaluates exactly such arguments
for the components far from a point, more of them as training goes (20% of the
``(batch, K)`` entries after 10 static-MNIST epochs, 43% after 40), so the epoch time kept
creeping up after the two fixes above. :func:`ppl_vae.pyro._mixture_math._logsumexp_near`
floors those entries 80.3 nats below the best one, where they are already nothing in
float32; :func:`fixes_disabled` turns that off too.

:func:`flush_denormal` is the blunt alternative, a context manager that turns on the CPU's
flush-to-zero / denormals-are-zero modes (``torch.set_flush_denormal``) and restores the
caller's setting on exit. The library does not use it. Caveat: the modes live in each
thread's control register and ``torch.set_flush_denormal`` sets only the calling thread's;
torch's intra-op worker threads keep the modes they had when they were started, so with more
than one torch thread it covers only the calling thread's share of the work.
"""

import contextlib
import itertools

import torch

__all__ = [
    "count_subnormal",
    "negligible_threshold",
    "flush_subnormal",
    "flush_negligible_grad",
    "flush_optimizer_state",
    "keep_optimizer_state_normal",
    "denormals_flushed",
    "flush_denormal",
]

_ENABLED = True  # False inside fixes_disabled(): benchmarks and tests of the unfixed state


@contextlib.contextmanager
def fixes_disabled():
    """Private, for benchmarks and tests: within the block the gradient cut and the
    optimizer-state flush do nothing (the state of issue 14)."""
    global _ENABLED
    outer, _ENABLED = _ENABLED, False
    try:
        yield
    finally:
        _ENABLED = outer


def count_subnormal(tensor):
    """Number of subnormal entries of ``tensor`` (0 for None and for non-float tensors)."""
    if tensor is None or not tensor.is_floating_point():
        return 0
    magnitude = tensor.detach().abs()
    return int(((magnitude > 0) & (magnitude < torch.finfo(tensor.dtype).tiny)).sum())


def negligible_threshold(dtype=torch.float32):
    """The magnitude below which :func:`flush_negligible_grad` zeroes a gradient: ``2^26``
    times the smallest normal number of ``dtype`` (``2^-100``, 7.9e-31, for float32; the
    smallest normal number itself for float16, whose range has no room for a margin)."""
    tiny = torch.finfo(dtype).tiny
    return tiny * 2.0**26 if tiny < 1e-30 else tiny


def flush_subnormal(tensor, threshold=None):
    """``tensor`` with its entries of magnitude below ``threshold`` (default: the smallest
    normal number of its dtype, so exactly its subnormal entries) replaced by zeros; a new
    tensor."""
    if threshold is None:
        threshold = torch.finfo(tensor.dtype).tiny
    return tensor.masked_fill(tensor.abs() < threshold, 0.0)


class _FlushNegligibleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, threshold):
        ctx.threshold = threshold
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return flush_subnormal(grad, ctx.threshold), None


def flush_negligible_grad(tensor, threshold=None):
    """Identity; on the way back, gradient entries of magnitude below ``threshold``
    (default :func:`negligible_threshold`, 7.9e-31 in float32) become zeros.

    Such a gradient is zero for every purpose of float32 training: added to any gradient
    above 1e-23 it vanishes in rounding, and Adam (with torch's default ``eps = 1e-8``)
    turns it into a step below ``lr * 1e-21``. The margin
    above the subnormal range (26 binary orders) is there because the backward pass keeps
    multiplying (by scales, gate derivatives, weights): cut only the subnormals and the
    values just above them become subnormal a few operations later.

    Put it where such gradients would otherwise flow into expensive work (a network's
    backward pass, the optimiser). Returns ``tensor`` itself when no gradient is recorded
    (``torch.no_grad``, or a tensor that does not require one), so evaluation pays nothing.
    """
    if not (_ENABLED and torch.is_grad_enabled() and tensor.requires_grad):
        return tensor
    if threshold is None:
        threshold = negligible_threshold(tensor.dtype)
    return _FlushNegligibleGrad.apply(tensor, float(threshold))


def flush_optimizer_state(optimizer):
    """Set the subnormal entries of every floating-point state tensor of ``optimizer``
    (Adam's ``exp_avg`` and ``exp_avg_sq``, ...) to zero, in place; returns how many."""
    flushed = 0
    with torch.no_grad():
        for state in optimizer.state.values():
            for value in state.values():
                if torch.is_tensor(value) and value.is_floating_point() and value.dim() > 0:
                    mask = value.abs() < torch.finfo(value.dtype).tiny
                    mask &= value != 0
                    count = int(mask.sum())
                    if count:
                        value.masked_fill_(mask, 0.0)
                        flushed += count
    return flushed


def keep_optimizer_state_normal(optimizer, every=100):
    """Keep subnormal numbers out of ``optimizer``'s state: every ``every`` steps (a step
    post-hook) :func:`flush_optimizer_state` zeroes them. Returns the hook's handle
    (``handle.remove()`` takes it off).

    Why: a parameter whose gradient is exactly zero step after step (a VampPrior pseudo-input
    pixel that has left the hardtanh's [0, 1]) has its Adam first moment decay by 0.9 a step
    into the subnormal range, where it never reaches zero: ``m + 0.1 (0 - m)`` rounds back to
    ``m`` at four times the smallest subnormal. Every later step then reads it twice (the
    moment update and the parameter update), with an assist each time. On static MNIST
    (pseudo-inputs initialised near 0) a fifth of the pseudo-input moments were stuck there
    after 40 epochs. The flushed values move no parameter (the step they give is below
    ``lr * 1e-29``). The period follows Adam's own ``step`` when the state has one, so a
    resumed run flushes on the same steps as an uninterrupted one.
    """
    every = int(every)
    if every < 1:
        raise ValueError(f"every must be >= 1; got {every}.")
    calls = itertools.count(1)

    def hook(opt, args, kwargs):
        step = next(calls)
        for state in opt.state.values():
            if isinstance(state.get("step"), (torch.Tensor, int, float)):
                step = int(state["step"])
            break
        if _ENABLED and step % every == 0:
            flush_optimizer_state(opt)

    return optimizer.register_step_post_hook(hook)


def denormals_flushed():
    """Whether float arithmetic in the calling thread flushes subnormals to zero right now
    (the CPU's flush-to-zero or denormals-are-zero mode is on).

    torch has ``set_flush_denormal`` but no getter, so this probes: a subnormal float32,
    made from its bits, times one. Either mode turns the product into zero. A one-element op
    runs in the calling thread, whose control register is the one ``set_flush_denormal``
    sets.
    """
    subnormal = torch.tensor([1 << 22], dtype=torch.int32).view(torch.float32)  # 2^-127
    return bool((subnormal * 1.0) == 0)


@contextlib.contextmanager
def flush_denormal(enabled=True):
    """Within the block, the calling thread flushes subnormal floats to zero (``enabled``)
    or keeps them (``enabled=False``); on exit the caller's setting is back, whatever it was.

    Yields whether the platform supports the switch (``torch.set_flush_denormal``'s return
    value: x86 with SSE3; where it is False nothing was changed and nothing is restored).
    The previous setting is read with :func:`denormals_flushed`, since torch offers no
    getter (``torch.set_flush_denormal`` switches both modes together, so a caller who had
    set only one of them gets both back). Only the calling thread is switched (see the
    module's caveat about torch's worker threads).
    """
    previous = denormals_flushed()
    supported = torch.set_flush_denormal(bool(enabled))
    try:
        yield supported
    finally:
        if supported:
            torch.set_flush_denormal(previous)
