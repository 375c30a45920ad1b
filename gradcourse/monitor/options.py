"""A GradientMonitor's options, checked once.

Taught in: Chapter 9. :class:`MonitorOptions` holds everything ``GradientMonitor(...)`` takes
besides the model and the optimizer; :meth:`MonitorOptions.checked` raises a ``TypeError`` or
``ValueError`` that names a bad value. The callbacks check their users' options with it when they
are built, not when training begins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gradcourse._validate import check_choice, check_int, check_positive_int
from gradcourse.monitor.layout import GROUP_BY

ON_NONFINITE = ("raise", "report")


@dataclass(frozen=True)
class MonitorOptions:
    """See :class:`~gradcourse.monitor.GradientMonitor` for what each option does."""

    every: int = 1
    group_by: str = "module"
    histograms: bool = True
    detail_every: int = 50
    bins: int = 40
    histogram_range: tuple[float, float] | None = None
    log_magnitude: bool = True
    update_ratios: bool = True
    on_nonfinite: str = "raise"
    find_module: bool = False
    start_step: int = 0
    forward_stats: bool = False

    @classmethod
    def checked(cls, **options: object) -> MonitorOptions:
        """The options, checked, with the histogram range filled in: ``(-10, 1)`` decades of
        ``|g|`` with ``log_magnitude``, else ``(-0.01, 0.01)``.

        Raises:
            TypeError: an unknown option, or a value of the wrong type (named).
            ValueError: a value out of range (named).
        """
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(
                f"unknown monitor option(s) {unknown}; the options are "
                f"{list(cls.__dataclass_fields__)}"
            )
        result = cls(**options)
        for name in ("every", "detail_every", "bins"):
            check_positive_int(name, getattr(result, name))
        check_int("start_step", result.start_step, minimum=0)
        check_choice("group_by", result.group_by, GROUP_BY)
        check_choice("on_nonfinite", result.on_nonfinite, ON_NONFINITE)
        for name in (
            "histograms",
            "log_magnitude",
            "update_ratios",
            "find_module",
            "forward_stats",
        ):
            if not isinstance(getattr(result, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(result, name)!r}")
        default = (-10.0, 1.0) if result.log_magnitude else (-1e-2, 1e-2)
        value_range = _checked_range(result.histogram_range or default)
        return cls(**{**options, "histogram_range": value_range})


def _checked_range(value: object) -> tuple[float, float]:
    if not (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) for v in value)
        and value[0] < value[1]
    ):
        raise ValueError(
            f"histogram_range must be (low, high), finite numbers with low < high, got {value!r}"
        )
    return float(value[0]), float(value[1])


SET_BY_A_CALLBACK = ("model", "optimizer", "on_nonfinite", "start_step")
"""What the Trainer and Lightning callbacks give the monitor themselves."""

CALLBACK_OPTIONS = tuple(
    name for name in MonitorOptions.__dataclass_fields__ if name not in SET_BY_A_CALLBACK
)
"""The monitor options a callback passes on from its user."""


def check_callback_options(monitor_options: dict[str, object]) -> MonitorOptions:
    """Check a callback's ``**monitor_options`` when the callback is built (Chapter 9).

    Raises:
        ValueError: an option the callback sets itself (named), or a value out of range.
        TypeError: an unknown option, or a value of the wrong type (named).
    """
    taken = sorted(set(SET_BY_A_CALLBACK) & set(monitor_options))
    if taken:
        raise ValueError(
            f"GradientMonitorCallback sets {taken} itself; give only the monitor's other options"
        )
    unknown = sorted(set(monitor_options) - set(CALLBACK_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown monitor option(s) {unknown}; the options are {list(CALLBACK_OPTIONS)}"
        )
    return MonitorOptions.checked(**monitor_options)
