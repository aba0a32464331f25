"""Task metrics beside the held-out loss (`eval.metrics`): multiple-choice accuracy scored by
log-likelihood (choice.py, lm-evaluation-harness style), and greedy generations scored by Rouge-L
and exact match (generation.py). judge.py applies them to one eval set of a Session with whatever
adapter its model holds, so a run and `fedsqueeze eval` share one code path."""

from .choice import Question, choice_metrics, distractor_pool, questions
from .generation import exact_match, normalize_answer, rouge_l

__all__ = ["Question", "choice_metrics", "distractor_pool", "exact_match", "normalize_answer", "questions", "rouge_l"]
