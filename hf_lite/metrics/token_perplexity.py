"""Token-weighted perplexity as an ``evaluate`` metric: ``exp(sum of token NLL / number of scored tokens)``.

The inputs are per-sequence sums, so batches (and processes, with evaluate's ``num_process``) combine
exactly: the result is the perplexity of the whole set, not a mean of batch perplexities. The Hub's
``evaluate-metric/perplexity`` is different: it downloads a model by id and scores raw texts.

>>> from hf_lite.metrics import load_metric
>>> load_metric("token_perplexity").compute(nll=[2.0, 4.0], num_tokens=[1, 3])
{'perplexity': 4.4816890703380645, 'loss': 1.5, 'num_tokens': 4}
"""

from __future__ import annotations

import math
from typing import Any

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Perplexity exp(sum(nll) / sum(num_tokens)) from per-sequence summed negative log-likelihoods."
_KWARGS_DESCRIPTION = """
Args:
    nll (`list` of `float`): summed negative log-likelihood (natural log) of the scored tokens of each sequence.
    num_tokens (`list` of `int`): number of scored tokens of each sequence.
Returns:
    perplexity (`float`), loss (`float`, mean NLL per token), num_tokens (`int`).
"""


class TokenPerplexity(evaluate.Metric):
    """Perplexity over all scored tokens of a set (an ``evaluate.Metric``; no Hub access).

    >>> TokenPerplexity(keep_in_memory=True).compute(nll=[0.0], num_tokens=[5])
    {'perplexity': 1.0, 'loss': 0.0, 'num_tokens': 5}
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"nll": datasets.Value("float64"), "num_tokens": datasets.Value("int64")}
            ),
        )

    def _compute(self, nll: Any, num_tokens: Any) -> dict[str, Any]:
        total = int(np.asarray(num_tokens, dtype=np.int64).sum())
        if total <= 0:
            raise ValueError(
                "num_tokens sums to 0: no token was scored (all labels are -100?); nothing to average."
            )
        loss = math.fsum(float(x) for x in nll) / total
        return {"perplexity": math.exp(loss), "loss": loss, "num_tokens": total}
