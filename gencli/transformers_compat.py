"""The one place gencli bends to a transformers version: the keyword that hands a model its KV cache.

transformers 5.24 renamed `past_key_values` to `cache` in the models' `forward`, in the attention
layers and in `generate`, and warns on the old name until it is removed (5.40 for `forward`, 6.0
for `generate`). Older 5.x releases know only `past_key_values`. Every call that passes a cache
spreads `cache_argument(cache)` into its keywords.
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers import GPT2Model

CACHE_KEYWORD = "cache" if "cache" in inspect.signature(GPT2Model.forward).parameters else "past_key_values"


def cache_argument(cache: Any) -> dict[str, Any]:
    """`{keyword: cache}` in the spelling of the installed transformers."""
    return {CACHE_KEYWORD: cache}
