"""Gradient monitoring cheap enough to leave switched on.

Taught in: Chapter 9 (monitoring gradients). :class:`GradientMonitor`
records, on every ``every``-th step, the global gradient norm, per-layer
norms, per-layer histograms of gradient values and per-layer
update-to-weight ratios, and names the first non-finite gradient. All
statistics of a step are computed on the device with fused
``torch._foreach`` operations and brought to the host in **one** transfer.

Use it around the optimizer step of any loop::

    # the monitor hooks optimizer.step()
    with GradientMonitor(model, optimizer=optimizer) as monitor:
        for batch in loader:
            optimizer.zero_grad()
            loss_fn(model(batch)).backward()
            optimizer.step()
    monitor.history["global_norm"]

or without an optimizer, calling :meth:`GradientMonitor.record` after
``backward()`` (before clipping) and :meth:`GradientMonitor.record_update`
after ``optimizer.step()`` (or :meth:`~GradientMonitor.skip_step` when the
step is skipped). :meth:`~GradientMonitor.close` removes the hooks; a
closed monitor keeps its history but records no more.

Inside ``torch.distributed`` workers: under DDP the gradients are already
averaged over the ranks when ``record()`` runs, so every rank records the
full gradient with no communication. Under FSDP2 (``fully_shard``; build
the monitor after sharding) each rank holds a shard of every gradient: the
monitor sums its per-shard squares, histogram counts and update norms with
one all-reduce per recorded step, so every statistic is the full
gradient's and a non-finite entry in any shard is seen by every rank. The
update ratio of the last detailed step travels with the next
``record()``; reading the history never starts a collective.

Norms are computed in float64 whatever the gradients' dtype, so finite
entries (up to float32's 3.4e38) never give an infinite norm: a step is
non-finite exactly when an entry is ``inf`` or ``NaN``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from gradcourse._validate import check_choice, check_positive_int
from gradcourse.sharding import local as _local
from gradcourse.sharding import sharding_group

ON_NONFINITE = ("raise", "report")
GROUP_BY = ("module", "parameter")


class NonFiniteGradientError(FloatingPointError):
    """A gradient has an ``inf`` or ``NaN`` entry. Names the step, the
    first such parameter and, in ``find_module`` mode, the module whose
    backward produced the first non-finite value (or, if the gradient
    reaching a module's output was already non-finite, that module with a
    note saying so)."""

    def __init__(
        self, step: int, parameter: str, module: str | None
    ) -> None:
        self.step, self.parameter, self.module = step, parameter, module
        where = f"; first produced by module {module!r}" if module else ""
        super().__init__(
            f"non-finite gradient at step {step} in parameter "
            f"{parameter!r}{where}"
        )


class GradientMonitor:
    """Per-layer gradient statistics over training, with one device-to-host
    transfer per recorded step.

    Args:
        model: the model whose trainable parameters are watched. A
            parameter shared by two modules (tied weights) is counted once;
            frozen parameters are skipped; a parameter without ``.grad`` in
            a step counts as zero; a sparse gradient
            (``nn.Embedding(sparse=True)``) is coalesced first.
        optimizer: if given, :meth:`attach` hooks ``optimizer.step()`` so
            recording is automatic. Without one, call :meth:`record` and
            :meth:`record_update` (or :meth:`skip_step`) yourself: no
            :meth:`attach` is needed.
        every: record every ``every``-th step (norms, update ratios and the
            non-finite check).
        detail_every: add the histograms and the update ratios on every
            ``detail_every``-th step (they cost a few passes over the
            gradients and weights; the norms cost one).
        group_by: ``"module"`` (a layer is the module owning the
            parameters) or ``"parameter"``.
        bins, histogram_range: fixed histogram bins per layer; values
            outside the range fall in the end bins. With ``log_magnitude``
            the histogram is of ``log10 |g|`` (range in decades, exact
            zeros land in the first bin); otherwise of ``g``.
            ``histograms=False`` skips them.
        update_ratios: record ``||w_after - w_before|| / ||w_before||`` per
            layer (keeps one copy of the weights, reused every recorded
            step).
        on_nonfinite: ``"raise"`` a :class:`NonFiniteGradientError` before
            the optimizer step, or ``"report"`` it in
            :attr:`nonfinite_events` and go on.
        find_module: with :meth:`attach`, also hook the gradients at the
            inputs and outputs of every leaf module (one without children)
            to name the module that produced the first non-finite value
            (costs a check per module per step: for debugging). Tensor
            hooks, so in-place modules such as ``ReLU(inplace=True)`` keep
            working.

    Raises:
        TypeError / ValueError: a bad argument, named in the message; a
            model with no trainable parameter.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        every: int = 1,
        group_by: str = "module",
        histograms: bool = True,
        detail_every: int = 50,
        bins: int = 40,
        histogram_range: tuple[float, float] | None = None,
        log_magnitude: bool = True,
        update_ratios: bool = True,
        on_nonfinite: str = "raise",
        find_module: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                "model must be a torch.nn.Module, got "
                f"{type(model).__name__}"
            )
        if optimizer is not None and not isinstance(
            optimizer, torch.optim.Optimizer
        ):
            raise TypeError(
                "optimizer must be a torch.optim.Optimizer or None, got "
                f"{type(optimizer).__name__}"
            )
        check_positive_int("every", every)
        check_positive_int("detail_every", detail_every)
        check_positive_int("bins", bins)
        check_choice("group_by", group_by, GROUP_BY)
        check_choice("on_nonfinite", on_nonfinite, ON_NONFINITE)
        histogram_range = histogram_range or (
            (-10.0, 1.0) if log_magnitude else (-1e-2, 1e-2)
        )
        if not (
            len(histogram_range) == 2
            and all(isinstance(v, (int, float)) for v in histogram_range)
            and math.isfinite(histogram_range[0])
            and math.isfinite(histogram_range[1])
            and histogram_range[0] < histogram_range[1]
        ):
            raise ValueError(
                "histogram_range must be (low, high), finite numbers with "
                f"low < high, got {histogram_range!r}"
            )
        self.model, self.optimizer = model, optimizer
        self.every, self.histograms, self.detail_every, self.bins = (
            every,
            histograms,
            detail_every,
            bins,
        )
        self.histogram_range, self.log_magnitude = (
            (float(histogram_range[0]), float(histogram_range[1])),
            log_magnitude,
        )
        self.update_ratios, self.on_nonfinite, self.find_module = (
            update_ratios,
            on_nonfinite,
            find_module,
        )
        # tied: listed once
        named = [
            (name, p)
            for name, p in model.named_parameters()
            if p.requires_grad
        ]
        if not named:
            raise ValueError(
                f"model {type(model).__name__} has no trainable parameter "
                "to monitor"
            )
        self.parameter_names = [name for name, _ in named]
        #: parameters with requires_grad=False (diagnose() names them)
        self.frozen_parameter_names = [
            name
            for name, p in model.named_parameters()
            if not p.requires_grad
        ]
        self._parameters = [p for _, p in named]
        # FSDP2: one all-reduce per recorded step makes the norms global
        self._group = sharding_group(
            self._parameters, self.parameter_names
        )
        owner = (
            (lambda name: name.rpartition(".")[0] or name)
            if group_by == "module"
            else (lambda name: name)
        )
        self.layer_names = list(
            dict.fromkeys(owner(name) for name in self.parameter_names)
        )
        self._layer_of = np.array(
            [
                self.layer_names.index(owner(name))
                for name in self.parameter_names
            ]
        )
        self.step = 0  # steps seen (recorded or not)
        self.transfers = (
            0  # device-to-host transfers made: one per recorded step
        )
        self.nonfinite_events: list[dict] = []
        self.skipped_steps: list[
            int
        ] = []  # steps ended by skip_step() (a GradScaler's overflow, say)
        self._rows: list[np.ndarray] = []  # one host row per recorded step
        self._steps: list[int] = []
        self._histogram_rows: list[np.ndarray] = []
        self._histogram_steps: list[int] = []
        self._recorded_step: int | None = None
        self._weights_before: list[torch.Tensor] | None = (
            None  # reused buffers for the update ratios
        )
        self._squares_before: torch.Tensor | None = None
        self._awaiting_update = False
        self._pending_update: torch.Tensor | None = (
            None  # update ratios waiting for the next transfer
        )
        self._pending_update_step: int | None = None
        self._update_rows: dict[int, np.ndarray] = {}
        self._first_bad_module: str | None = None
        self._output_claim: tuple[int, str] | None = (
            None  # find_module: (tensor id, module), see below
        )
        self._handles: list = []
        self._closed = False
        self._stale: list[bool] = []
        self._leftover: torch.Tensor | None = None
        self._sentinel_handle = None
        self._snapshot: list[torch.Tensor] | None = None
        self._watch_sentinel()

    def _watch_sentinel(self) -> None:
        """Watch one small parameter for a forgotten ``zero_grad()``: its
        gradient hook runs before the new gradient is added to ``.grad``,
        so on the first backward of a step ``.grad`` must be None or zero.
        What it holds then (its largest entry, kept on the device) travels
        with the step's one transfer. Not under FSDP2, where ``.grad`` is
        a sharded tensor that FSDP itself manages."""
        candidates = [p for p in self._parameters if p.numel()]
        if self._group is not None or not candidates:
            return
        sentinel = min(candidates, key=lambda p: p.numel())

        def before_accumulation(grad: torch.Tensor) -> None:
            if self._leftover is not None:  # not the step's first backward
                return
            old = sentinel.grad
            if old is None:
                self._leftover = grad.new_zeros((), dtype=torch.float64)
            else:
                old = old.detach()
                old = old.coalesce().values() if old.is_sparse else old
                self._leftover = old.abs().amax().double()

        self._sentinel_handle = sentinel.register_hook(before_accumulation)

    # --- attaching
    # --------------------------------------------------------
    def attach(self) -> GradientMonitor:
        """Add the hooks (optimizer step hooks if an optimizer was given;
        module backward hooks in ``find_module`` mode). Returns ``self``.
        Not needed to call :meth:`record` yourself."""
        if self._closed:
            raise RuntimeError(
                "this GradientMonitor was closed; build a new one to "
                "monitor again (a closed monitor keeps its history)"
            )
        if self._handles:
            raise RuntimeError("GradientMonitor is already attached")
        if self.optimizer is not None:
            self._handles.append(
                self.optimizer.register_step_pre_hook(
                    lambda *args: self._before_step()
                )
            )
            self._handles.append(
                self.optimizer.register_step_post_hook(
                    lambda *args: self.record_update()
                )
            )
        if self.find_module:
            for name, module in self.model.named_modules():
                # leaf modules: where the computations are
                if not any(True for _ in module.children()):
                    self._handles.append(
                        module.register_forward_hook(
                            self._forward_hook(name or "(model)")
                        )
                    )
        return self

    def close(self) -> None:
        """Remove every hook this monitor added and drop its references to
        the model and optimizer. The history stays readable; :meth:`record`
        and :meth:`attach` refuse from now on."""
        self._flush_update()
        self._closed = True
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._sentinel_handle is not None:
            self._sentinel_handle.remove()
            self._sentinel_handle = None
        self.model = self.optimizer = None
        self._parameters, self._weights_before, self._squares_before = (
            [],
            None,
            None,
        )

    def __enter__(self) -> GradientMonitor:
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _forward_hook(self, name: str):
        # Tensor hooks on the module's outputs and inputs. Backward runs
        # from the loss towards the inputs, so the first non-finite
        # gradient seen names where it appeared. A tensor that is one
        # module's output and the next one's input gets both hooks, output
        # first: a non-finite gradient there was made by the consumer's
        # backward, so an output hook only leaves a claim that the
        # consumer's input hook on the same tensor overrides; the claim
        # stands ("arrived non-finite") when the next hook to fire is on
        # another tensor, or at record().
        def on_gradient(key: int, where: str, is_input: bool):
            def hook(grad: torch.Tensor) -> None:
                if self._first_bad_module is not None:
                    return
                if (
                    self._output_claim is not None
                    and self._output_claim[0] != key
                ):
                    self._first_bad_module = self._output_claim[1]
                    return
                if not bool(torch.isfinite(grad).all()):
                    if is_input:
                        self._first_bad_module = where
                    else:
                        self._output_claim = (key, where)

            return hook

        def hook(module: nn.Module, inputs: tuple, output) -> None:
            if not torch.is_grad_enabled():
                return
            outputs = (
                output if isinstance(output, (tuple, list)) else (output,)
            )
            for tensor in outputs:
                if (
                    isinstance(tensor, torch.Tensor)
                    and tensor.requires_grad
                ):
                    where = (
                        f"{name} (its output gradient was already "
                        "non-finite)"
                    )
                    tensor.register_hook(
                        on_gradient(id(tensor), where, is_input=False)
                    )
            for tensor in inputs:
                if (
                    isinstance(tensor, torch.Tensor)
                    and tensor.requires_grad
                ):
                    tensor.register_hook(
                        on_gradient(id(tensor), name, is_input=True)
                    )

        return hook

    # --- recording
    # --------------------------------------------------------
    def _before_step(self) -> None:
        # not already recorded explicitly in this step
        if self._recorded_step != self.step:
            self.record()

    def record(self, *, overflow_expected: bool = False) -> bool:
        """Record the current gradients as this step's (call after
        ``backward()``, before clipping if the pre-clipping norm is
        wanted). Returns whether every gradient entry was finite (``True``
        for a step that ``every`` leaves out).

        A non-finite gradient raises :class:`NonFiniteGradientError`
        (``on_nonfinite="raise"``) after ending the step, so the next step
        is checked too; or is reported in :attr:`nonfinite_events`. With
        ``overflow_expected=True`` (a ``GradScaler`` will skip the step) it
        does neither: end the step with :meth:`skip_step`, which lists it
        in :attr:`skipped_steps`.
        """
        if self._closed:
            raise RuntimeError(
                "this GradientMonitor was closed; build a new one to "
                "record again"
            )
        # recorded before, and nothing ended that step
        if self._recorded_step == self.step:
            self.step += 1
        self._recorded_step = self.step
        if self.step % self.every:
            self._first_bad_module, self._output_claim = None, None
            self._leftover = None
            return True
        detailed = self.step % self.detail_every == 0
        with_histograms = self.histograms and detailed
        snapshot, self._snapshot = self._snapshot, None
        pieces = list(
            snapshot or self._gradient_statistics(with_histograms)
        )
        if self._pending_update is not None:
            pieces.append(self._pending_update)
        leftover = self._leftover
        if leftover is None:  # no hook ran (FSDP2, or no gradient)
            leftover = pieces[0].new_zeros(())
        self._leftover = None  # the next backward starts a new step
        pieces.insert(0, leftover)
        flat = torch.cat([piece.double().reshape(-1) for piece in pieces])
        if self._group is not None:
            # sums of squares and counts add up over the shards
            torch.distributed.all_reduce(flat, group=self._group)
        host = flat.cpu().numpy()  # the one transfer
        # the gradient held something before this step's first backward
        self._stale.append(bool(host[0] > 0))
        host = host[1:]
        self.transfers += 1
        parameter_count, layer_count = (
            len(self._parameters),
            len(self.layer_names),
        )
        squares = host[:parameter_count]
        if self._pending_update is not None:
            self._update_rows[self._pending_update_step] = (
                self._update_ratios(host[-2 * parameter_count :])
            )
            host = host[: -2 * parameter_count]
            self._pending_update = None
        self._steps.append(self.step)
        self._rows.append(self._per_layer(squares))  # squared layer norms
        if with_histograms:
            self._histogram_steps.append(self.step)
            self._histogram_rows.append(
                host[parameter_count:].reshape(layer_count, self.bins)
            )
        if self.update_ratios and detailed:
            weights = [_local(p.detach()) for p in self._parameters]
            if self._weights_before is None:
                self._weights_before = [
                    torch.empty_like(weight) for weight in weights
                ]
            torch._foreach_copy_(self._weights_before, weights)
            self._squares_before = (
                torch.stack(
                    torch._foreach_norm(weights, 2, dtype=torch.float64)
                )
                ** 2
            )
            self._awaiting_update = True
        return self._check_finite(squares, overflow_expected)

    def _gradient_statistics(
        self, with_histograms: bool
    ) -> list[torch.Tensor]:
        """``[(P,) squared norms, (layers * bins,) counts if asked]`` of
        the current gradients, on the device. Under FSDP2 each rank's own
        shard: sums over entries, made global by record()'s all-reduce."""
        grads = [self._dense_values(p.grad, p) for p in self._parameters]
        squares = torch._foreach_norm(grads, 2, dtype=torch.float64)
        pieces = [torch.stack(squares) ** 2]
        if with_histograms:
            pieces.append(self._histograms(grads).reshape(-1))
        return pieces

    def snapshot(self) -> None:
        """Compute the next recorded step's gradient statistics now, on the
        device (no transfer), for the next :meth:`record` to use instead
        of the gradients it would find then.

        For loops where something changes ``.grad`` between the backward
        and the place where ``record()`` can run: the Hugging Face
        ``Trainer`` clips before any callback sees the gradients
        (``gradcourse.hf``). Calling it again replaces the snapshot.
        """
        if self._closed:
            raise RuntimeError(
                "this GradientMonitor was closed; build a new one to "
                "record again"
            )
        upcoming = self.step + (self._recorded_step == self.step)
        if upcoming % self.every:
            return
        detailed = upcoming % self.detail_every == 0
        self._snapshot = self._gradient_statistics(
            self.histograms and detailed
        )

    @staticmethod
    def _dense_values(
        grad: torch.Tensor | None, parameter: torch.Tensor
    ) -> torch.Tensor:
        """The entries whose norm is the gradient's norm: a sparse
        gradient's coalesced values; this rank's shard of a sharded one."""
        if grad is None:
            return torch.zeros(
                (), device=parameter.device, dtype=parameter.dtype
            )
        grad = _local(grad.detach())
        return grad.coalesce().values() if grad.is_sparse else grad

    def _histograms(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """``(layers, bins)`` counts: one flattened copy of each layer's
        gradients, binned by ``bincount``. The rows a sparse gradient does
        not store are zeros, counted in the bin of 0."""
        low, high = self.histogram_range
        counts = []
        for layer in range(len(self.layer_names)):
            members = np.flatnonzero(self._layer_of == layer)
            values = torch.cat(
                [grads[i].reshape(-1).float() for i in members]
            )
            if self.log_magnitude:
                values = values.abs_().log10_()
            bins = (
                values.nan_to_num_(low, high, low)
                .sub_(low)
                .mul_(self.bins / (high - low))
            )
            layer_counts = torch.bincount(
                bins.clamp_(0, self.bins - 1).long(), minlength=self.bins
            )
            implicit_zeros = sum(
                _local(self._parameters[i]).numel() - grads[i].numel()
                for i in members
                if self._parameters[i].grad is not None
            )
            if implicit_zeros:
                zero_bin = (
                    0
                    if self.log_magnitude
                    else int(
                        np.clip(
                            -low * self.bins / (high - low),
                            0,
                            self.bins - 1,
                        )
                    )
                )
                layer_counts[zero_bin] += implicit_zeros
            counts.append(layer_counts)
        return torch.stack(counts)

    def _per_layer(self, per_parameter: np.ndarray) -> np.ndarray:
        """Sum per-parameter values (squared norms) into their layers, on
        the host."""
        return np.bincount(
            self._layer_of,
            weights=per_parameter,
            minlength=len(self.layer_names),
        )

    def _update_ratios(self, squares: np.ndarray) -> np.ndarray:
        """Per-layer ``||update|| / ||weights before||`` from per-parameter
        squared norms (updates, then weights)."""
        update, before = np.split(squares, 2)
        return np.sqrt(
            self._per_layer(update)
            / np.maximum(self._per_layer(before), 1e-30)
        )

    def _check_finite(
        self, squares: np.ndarray, overflow_expected: bool
    ) -> bool:
        # float64 squares of finite float32/bfloat16/float16 entries cannot
        # overflow: a non-finite square means a non-finite entry
        bad = np.flatnonzero(~np.isfinite(squares))
        module = self._first_bad_module or (
            self._output_claim[1] if self._output_claim else None
        )
        self._first_bad_module, self._output_claim = None, None
        if not bad.size or overflow_expected:
            return not bad.size
        parameter = self.parameter_names[bad[0]]
        # no input gradient went bad: the weight gradient did
        if self.find_module and module is None:
            module = (
                f"{parameter.rpartition('.')[0] or parameter} (in its "
                "parameter gradient)"
            )
        event = {
            "step": self.step,
            "parameter": parameter,
            "module": module,
        }
        self.nonfinite_events.append(event)
        if self.on_nonfinite == "raise":
            self._awaiting_update = False
            # the step ends here: the next record() checks the next step
            self.step += 1
            raise NonFiniteGradientError(**event)
        return False

    def record_update(self) -> None:
        """After ``optimizer.step()``: the update-to-weight ratio per layer
        (kept on the device until the next recorded step's transfer). Also
        ends the step."""
        if self._awaiting_update and self._recorded_step == self.step:
            after = [_local(p.detach()) for p in self._parameters]
            # the buffers now hold -update
            torch._foreach_sub_(self._weights_before, after)
            update = (
                torch.stack(
                    torch._foreach_norm(
                        self._weights_before, 2, dtype=torch.float64
                    )
                )
                ** 2
            )
            # to the host with the next transfer
            self._pending_update = torch.cat(
                [update, self._squares_before]
            )
            self._pending_update_step = self.step
        self._awaiting_update = False
        self.step += 1

    def skip_step(self) -> None:
        """End the current step without an optimizer update (a non-finite
        step skipped by hand or by a ``GradScaler``): no update ratio is
        taken, and the step is listed in :attr:`skipped_steps`."""
        if self._closed:
            raise RuntimeError(
                "this GradientMonitor was closed; build a new one to "
                "record again"
            )
        self.skipped_steps.append(self.step)
        self._awaiting_update = False
        self.step += 1

    def _flush_update(self) -> None:
        # Under FSDP2 the last update ratio waits for the next record()'s
        # all-reduce: reading the history must not start a collective that
        # the other ranks may not join.
        if self._pending_update is not None and self._group is None:
            self._update_rows[self._pending_update_step] = (
                self._update_ratios(self._pending_update.cpu().numpy())
            )
            self._pending_update = None

    # --- results
    # ----------------------------------------------------------
    @property
    def latest_layer_norms(self) -> dict[str, float]:
        """``{layer: gradient norm}`` of the last recorded step (empty
        before the first); cheaper than :attr:`history` for logging."""
        if not self._rows:
            return {}
        return dict(
            zip(self.layer_names, np.sqrt(self._rows[-1]).tolist())
        )

    @property
    def history(self) -> dict[str, np.ndarray | list[str]]:
        """Plain arrays: ``steps (S,)``, ``global_norm (S,)``,
        ``layer_norms (S, L)``, ``update_ratios (S, L)`` (NaN where not
        measured), ``layer_names``, ``log_magnitude``, and if recorded
        ``histogram_steps (H,)``, ``histograms (H, L, bins)`` and
        ``bin_edges (bins + 1,)``, and ``skipped_steps``. Update ratios and
        histograms exist on every ``detail_every``-th step."""
        self._flush_update()
        layers = len(self.layer_names)
        squares = np.array(self._rows).reshape(len(self._rows), layers)
        result: dict = {
            "steps": np.array(self._steps),
            "layer_names": list(self.layer_names),
            "log_magnitude": self.log_magnitude,
            "skipped_steps": list(self.skipped_steps),
            # (S,) True where .grad was not reset before the backward
            "stale_gradient": np.array(self._stale, dtype=bool),
            "layer_norms": np.sqrt(squares),
            "global_norm": np.sqrt(squares.sum(1)),
        }
        if self.histograms:
            result["histogram_steps"] = np.array(self._histogram_steps)
            result["histograms"] = np.array(self._histogram_rows).reshape(
                len(self._histogram_rows), layers, self.bins
            )
            result["bin_edges"] = np.linspace(
                *self.histogram_range, self.bins + 1
            )
        ratios = np.full((len(self._steps), layers), np.nan)
        for index, step in enumerate(self._steps):
            if step in self._update_rows:
                ratios[index] = self._update_rows[step]
        result["update_ratios"] = ratios
        return result

    def log_to(self, writer, *, prefix: str = "gradients") -> None:
        """Write the history to a TensorBoard ``SummaryWriter``: scalars
        (global norm, per-layer norms and update ratios) and per-layer
        histograms, at their training steps."""
        history = self.history
        for index, step in enumerate(history["steps"].tolist()):
            writer.add_scalar(
                f"{prefix}/global_norm",
                history["global_norm"][index],
                step,
            )
            for layer, name in enumerate(history["layer_names"]):
                writer.add_scalar(
                    f"{prefix}/norm/{name}",
                    history["layer_norms"][index, layer],
                    step,
                )
                if not math.isnan(history["update_ratios"][index, layer]):
                    writer.add_scalar(
                        f"{prefix}/update_ratio/{name}",
                        history["update_ratios"][index, layer],
                        step,
                    )
        for index, step in enumerate(
            history.get("histogram_steps", np.array([])).tolist()
        ):
            for layer, name in enumerate(history["layer_names"]):
                counts, edges = (
                    history["histograms"][index, layer],
                    history["bin_edges"],
                )
                centres = (edges[:-1] + edges[1:]) / 2
                writer.add_histogram_raw(
                    f"{prefix}/histogram/{name}",
                    min=float(edges[0]),
                    max=float(edges[-1]),
                    num=float(counts.sum()),
                    sum=float((counts * centres).sum()),
                    sum_squares=float((counts * centres**2).sum()),
                    bucket_limits=edges[1:].tolist(),
                    bucket_counts=counts.tolist(),
                    global_step=step,
                )


# diagnose() reads a monitor's history back (Chapter 11)
from gradcourse.diagnosis import Finding, diagnose  # noqa: E402, F401
