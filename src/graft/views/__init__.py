"""Per-view preprocessing (the founding recipe's): crop Flower/Fruit/Leaf/Stem to the subject, whiten LeafScan
backgrounds; the decisions are cached and shared by every backbone; a contact sheet shows them."""

from graft.views.decisions import DecisionCache, decision_store
from graft.views.preprocess import Decision, apply, decide, params_key, preprocess

__all__ = ["Decision", "DecisionCache", "apply", "decide", "decision_store", "params_key", "preprocess"]
