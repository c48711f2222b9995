"""The TRTModel resource and the refit worker's result: pydantic models, nothing else of ours imported."""
