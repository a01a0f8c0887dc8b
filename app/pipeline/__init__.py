"""The generation pipeline as a stream: candidates flow from prompts through the filters and the
model steps to the database while the model server is kept as busy as its pool allows.

- `context`: what one execution of a run holds (pool, backend, spend, strategy) and the LLM call;
- `loading`: the pool read from the database;
- `stages`: one candidate's steps (screen, classify, instances, decide); the prompts are the
  strategy's (app/strategies/);
- `storage`: commit groups and the dataset-wide novelty sync;
- `ending`: the end of a run or of one of its shards;
- `driver`: the loop that keeps requests in flight and decides when the run stops;
- `execution`: a claimed run or shard, from its claim to its driver.
"""

from app.pipeline.execution import execute_run, execute_shard

__all__ = ["execute_run", "execute_shard"]
