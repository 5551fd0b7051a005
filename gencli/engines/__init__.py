"""One decoding mode per module, all behind the `Engine` interface."""

from gencli.engines.base import CachedStepEngine, DecodeRequest, Engine, StepEngine
from gencli.engines.generate import HFGenerateEngine
from gencli.engines.greedy import GreedyEngine
from gencli.engines.kv_cache import KVCacheEngine
from gencli.engines.scratch import ScratchEngine

ENGINES: dict[str, type[Engine]] = {
    engine.name: engine for engine in (HFGenerateEngine, GreedyEngine, KVCacheEngine, ScratchEngine)
}

__all__ = ["ENGINES", "CachedStepEngine", "DecodeRequest", "Engine", "StepEngine"]
