"""The engine core: requests become sequences, the scheduler batches them over a paged KV cache, the
runner steps the model and the sampler picks tokens; ``LLMEngine`` is the loop, ``AsyncEngine`` its
asyncio face, and all model computation runs on the one compute thread."""
