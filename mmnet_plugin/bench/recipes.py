"""Training recipes of the benchmark harness: which published protocol each method follows.

Every method knows a few named recipes (``Method.RECIPES``); ``--recipe`` picks one for all
methods (``--recipe published``) or per method (``--recipe published,maml=harness``). Each
recipe names its source (a key of :data:`mmnet_plugin.bench.published.SOURCES`), and the results
record it.

- ``published`` (the default on real data): each method as its paper trains it, see the
  method files and ``mmnet_plugin/bench/published.py`` (``RECIPE_SOURCES``).
- ``harness``: the harness's recipe before issue 12 (the default on ``glyphs``, so the bare
  command is unchanged): every method on the shared stream, MAML with PyTorch's default
  initialisation, Matching Networks with FCE, MM-Net's batch shrunk by the budget.

Budget rule (:func:`rule_batch`): under ``published`` recipes and under
``--budget-seconds``, *every* method's batch (MM-Net's episodes a step, MAML's meta-batch)
is shrunk so that the budget gives at least ``--min-steps`` optimiser steps (default 200),
the rule MM-Net had alone before. In seconds mode the episode budget is estimated from the
first step's time per episode; the results record the batch used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional

__all__ = ["Recipe", "RecipeError", "default_recipe", "parse_recipe_spec", "rule_batch", "DEFAULT_MIN_STEPS"]

#: the budget rule's minimum number of optimiser steps (MM-Net's rule before issue 12)
DEFAULT_MIN_STEPS = 200


@dataclass(frozen=True)
class Recipe:
    """One named training recipe of one method.

    Attributes:
        name: the recipe's name (``published``, ``harness``, ...).
        source: key of :data:`mmnet_plugin.bench.published.SOURCES` the recipe follows.
        summary: one line: what is trained how, and what deviates from the source.
    """

    name: str
    source: str
    summary: str

    def to_dict(self) -> Dict[str, str]:
        return {"name": self.name, "source": self.source, "summary": self.summary}


class RecipeError(ValueError):
    """A ``--recipe`` specification names a recipe or a method that does not exist."""


def default_recipe(dataset: str) -> str:
    """``published`` on real data (Omniglot, miniImageNet), ``harness`` on ``glyphs``."""
    return "harness" if dataset == "glyphs" else "published"


def parse_recipe_spec(
    spec: Optional[str], methods: Iterable[str], recipes: Mapping[str, Iterable[str]], dataset: str
) -> Dict[str, str]:
    """Resolve ``--recipe`` to one recipe per method.

    Args:
        spec: ``NAME`` (every method), ``METHOD=NAME`` items, or both, comma-separated;
            ``None``: :func:`default_recipe` for every method.
        methods: the methods of the run.
        recipes: method -> the recipe names it knows.
        dataset: the data set (for the default).

    Returns:
        method -> recipe name.

    Raises:
        RecipeError: a one-line message naming the unknown recipe or method and the choices.
    """
    methods = list(methods)
    default = default_recipe(dataset)
    out = {m: default for m in methods}
    if spec is None:
        return out
    items = [t.strip() for t in str(spec).split(",") if t.strip()]
    if not items:
        raise RecipeError("--recipe is empty; e.g. --recipe published or --recipe published,maml=harness")
    general: List[str] = [t for t in items if "=" not in t]
    if len(general) > 1:
        raise RecipeError(
            f"--recipe names more than one recipe for all methods ({', '.join(general)}); "
            "give one, then METHOD=NAME items"
        )
    if general:
        for m in methods:
            out[m] = general[0].lower()
    for item in items:
        if "=" not in item:
            continue
        method, _, name = (p.strip().lower() for p in item.partition("="))
        if method not in recipes:
            raise RecipeError(f"--recipe {item}: unknown method {method!r}; choose from {', '.join(recipes)}")
        if method not in methods:
            raise RecipeError(f"--recipe {item}: method {method!r} is not in --methods ({', '.join(methods)})")
        out[method] = name
    for m in methods:
        known = list(recipes[m])
        if out[m] not in known:
            raise RecipeError(f"unknown recipe {out[m]!r} for method {m}; {m} knows: {', '.join(known)}")
    return out


def rule_batch(recipe_batch: int, episode_budget: Optional[float], min_steps: int) -> int:
    """The budget rule: the recipe's batch, shrunk so that ``episode_budget`` episodes give
    at least ``min_steps`` steps (at least 1 episode a step).

    Args:
        recipe_batch: the recipe's episodes a step (MM-Net's batch, MAML's meta-batch).
        episode_budget: training episodes available (estimated in seconds mode); ``None``:
            unknown, the recipe's batch is kept.
        min_steps: the minimum number of steps; 0 turns the rule off.

    Returns:
        Episodes a step.
    """
    b = max(1, int(recipe_batch))
    if not min_steps or episode_budget is None:
        return b
    return max(1, min(b, int(episode_budget // int(min_steps))))
