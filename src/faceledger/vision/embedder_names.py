"""The embedder names an operator can choose (``FACELEDGER_EMBEDDER``). Kept apart from
``embedders`` (which loads numpy and the model code) so that settings can name them."""

from __future__ import annotations

from typing import Literal, get_args

EmbedderName = Literal["dlib+sface", "dlib"]
EMBEDDERS: tuple[str, ...] = get_args(EmbedderName)
