"""A chart's image: from the cache, or drawn once however many requests ask for it.

Data does the filtering and grouping (spec.build_query); a worker process draws
(render_pool); the image is kept under its cache key (spec.cache_key), which is also the
response's strong ETag.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Histogram

from datalab.contracts.data_client import DataClient
from datalab.contracts.datasets import DatasetOut

from .chart_cache import ChartCache
from .render_pool import RenderPool, SingleFlight
from .spec import ChartSpec, Format, build_query

RENDERS = Histogram(
    "datalab_viz_render_seconds", "Chart render time in a worker", ["kind", "format"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CACHE = Counter("datalab_viz_cache_total", "Chart requests by cache outcome", ["outcome"])


def dataset_version(dataset: DatasetOut) -> str:
    """Its created_at (datasets are immutable), in the words data sent it, so cache keys and
    ETags do not depend on how a datetime is printed here."""
    return str(dataset.model_dump(mode="json", include={"created_at"})["created_at"])


class Charts:
    """The image cache, the render pool, and the one render per image in flight."""

    def __init__(self, cache: ChartCache, pool: RenderPool):
        self.cache = cache
        self.pool = pool
        self.single_flight = SingleFlight()

    async def image(self, data: DataClient, spec: ChartSpec, types: Mapping[str, str], fmt: Format,
                    key: str) -> tuple[bytes, str]:
        """The image and where it came from: the cache ("hit") or a render ("miss")."""
        if (image := await self.cache.get(key)) is not None:
            return image, "hit"
        return await self.single_flight.run(key, lambda: self._render(data, spec, types, fmt, key)), "miss"

    async def _render(self, data: DataClient, spec: ChartSpec, types: Mapping[str, str], fmt: Format,
                      key: str) -> bytes:
        # Looked up again: a render of this key may have ended since the caller's cache miss.
        if (image := await self.cache.get(key)) is not None:
            return image
        dataset_id = str(spec.dataset_id)
        body = await data.query_body(dataset_id, build_query(spec, types))
        image, seconds = await self.pool.draw(spec, types, body, fmt)
        RENDERS.labels(spec.kind, fmt).observe(seconds)
        await self.cache.put(dataset_id, key, image)
        return image

    async def close(self) -> None:
        await self.pool.close()
