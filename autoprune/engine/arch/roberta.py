"""RoBERTa (and XLM-RoBERTa, CamemBERT): BERT's layer layout under other class names."""

from __future__ import annotations

from autoprune.engine.arch.bert import BertFamily


class RobertaFamily(BertFamily):
    """RoBERTa-style encoders; ``model.base_model.encoder.layer`` as in BERT."""

    name = "roberta"
    model_types = ("roberta", "xlm-roberta", "camembert")
