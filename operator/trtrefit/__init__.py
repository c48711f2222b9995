"""trt-refit-operator: keeps TensorRT-served models current by refitting engines, not recompiling them."""

__version__ = "0.1.0"
