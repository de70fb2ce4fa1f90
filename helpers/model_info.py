"""What an engine file says about its model, so that runners need no flags for it.

The builders write it as the network's name, which both backends keep in the engine
(``ICudaEngine.name``; the portable engine's header field ``name``): a JSON object with

* ``family``: the HuggingFace ``model_type`` the weights came from (``bert``, ``roberta``,
  ``xlm-roberta``, ``distilbert``, ``electra``, ``albert``);
* ``tokenizer``: the kind of tokenizer the model reads text with (``wordpiece``, ``bpe``, ``unigram``);
* ``token_types``: the rows of the token-type table; with one row every segment id must be 0.

An engine whose name is not such an object (built before, or by the original demo) is a BERT
model with a WordPiece vocabulary and two token types.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ModelInfo:
    family: str = "bert"
    tokenizer: str = "wordpiece"
    token_types: int = 2

    def network_name(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_network_name(cls, name: str) -> ModelInfo:
        try:
            data = json.loads(name)
        except ValueError:
            return cls()
        if not isinstance(data, dict) or "family" not in data:
            return cls()
        kinds = {field.name: type(getattr(cls(), field.name)) for field in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in kinds and isinstance(value, kinds[key])})
