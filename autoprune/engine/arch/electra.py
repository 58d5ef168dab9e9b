"""ELECTRA: BERT's layer layout; its embeddings may be narrower than the layers.

The embedding projection (``embeddings_project``) is not prunable; heads are sized from
``hidden_size`` as in BERT.
"""

from __future__ import annotations

from autoprune.engine.arch.bert import BertFamily


class ElectraFamily(BertFamily):
    """ELECTRA discriminators; ``model.base_model.encoder.layer`` as in BERT."""

    name = "electra"
    model_types = ("electra",)
