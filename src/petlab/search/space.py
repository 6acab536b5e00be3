"""The search space, written as Hydra sweeps (``choice(16, 32)``, ``interval(0, 0.5)``, ``tag(log, interval(1e-4,
1e-2))``, ``int(interval(2, 8))``, ``range(1, 5)``, ``a,b``), as Optuna distributions; and a trial's values as
command-line overrides."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from petlab.errors import PetlabError, first_line

EXAMPLES = "choice(16, 32), interval(0.0, 0.5), tag(log, interval(1e-4, 1e-2)), int(interval(2, 8)) or a,b"


def distribution(key: str, expression: str) -> BaseDistribution:
    """The Optuna distribution that the sweep ``expression`` of ``key`` describes; a PetlabError if it is none."""
    try:
        (override,) = OverridesParser.create().parse_overrides([f"{key}={expression}"])
    except Exception as error:  # Hydra's parser raises its own error types with a long message
        raise PetlabError(f"search.params: {key}={expression} does not parse ({first_line(error)}): write it as "
                          f"{EXAMPLES}") from error  # fmt: skip
    sweep = override.value()
    tags = set(getattr(sweep, "tags", set()))
    if tags - {"log"}:
        raise PetlabError(f"search.params: {key}={expression} has the tags {sorted(tags)}: only log is known")
    log = "log" in tags
    if not isinstance(sweep, ChoiceSweep | IntervalSweep | RangeSweep):
        raise PetlabError(f"search.params: {key}={expression} is a single value, not a space: write it as {EXAMPLES}")
    if isinstance(sweep, ChoiceSweep):
        choices = list(sweep.list)
        if not all(value is None or isinstance(value, bool | int | float | str) for value in choices):
            raise PetlabError(f"search.params: {key}={expression} offers a list or a dict: choices must be single "
                              "values (numbers, words, true/false, null)")  # fmt: skip
        return CategoricalDistribution(choices)
    try:
        return _numeric(sweep, log)
    except ValueError as error:  # Optuna's own checks: low above high, a log scale through 0, log with a step
        raise PetlabError(f"search.params: {key}={expression} is not a valid space ({first_line(error)})") from error


def _numeric(sweep: IntervalSweep | RangeSweep, log: bool) -> BaseDistribution:
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    if isinstance(sweep, RangeSweep):
        values = [sweep.start + i * sweep.step for i in range(math.ceil((sweep.stop - sweep.start) / sweep.step))]
        if not values:
            raise ValueError("an empty range")
        if all(isinstance(value, int) for value in (sweep.start, sweep.step)):
            return IntDistribution(int(values[0]), int(values[-1]), step=int(sweep.step), log=log)
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(sweep.step), log=log)
    raise ValueError(f"a single value, not a space: write it as {EXAMPLES}")


def search_space(params: Mapping[str, str]) -> dict[str, BaseDistribution]:
    """Every parameter's distribution, or a PetlabError naming the first one that is not a space."""
    return {str(key): distribution(str(key), str(expression)) for key, expression in params.items()}


def is_sweep(override: str) -> bool:
    """Whether a command-line override gives a space (``key=choice(...)``, ``key=a,b``) rather than one value; a
    PetlabError if it does not parse."""
    try:
        (parsed,) = OverridesParser.create().parse_overrides([override])
    except Exception as error:  # Hydra's parser raises its own error types with a long message
        raise PetlabError(f"{override} does not parse ({first_line(error)}): write key=value, or a space such as "
                          f"key={EXAMPLES.replace(', ', ', key=')}") from error  # fmt: skip
    return parsed.is_sweep_override()


PLAIN = re.compile(r"[A-Za-z0-9_./:+-]+")


def override_value(value: Any) -> str:
    """``value`` as Hydra's override grammar reads it back: quoted where a character would be parsed."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if isinstance(value, str) and not (PLAIN.fullmatch(text) and _read_back(text) == text):
        # Inside quotes Hydra unescapes a backslash only before a quote or at the end.
        escaped = text.replace("'", "\\'") + ("\\" if text.endswith("\\") else "")
        return f"'{escaped}'"
    return text


def _read_back(text: str) -> Any:
    """What Hydra makes of an unquoted value (``16`` an int, ``true`` a bool, ``null`` None)."""
    return OverridesParser.create().parse_override(f"key={text}").value()


def overrides(params: Mapping[str, Any]) -> list[str]:
    """A trial's values as the overrides of its run (``optimizer.lr=0.0012``)."""
    return [f"{key}={override_value(value)}" for key, value in params.items()]
