"""Model numbers: parameters, MACs, size on disk (dense and compressed), latency, accuracy.

``metrics`` gathers them (`measure` → `ModelMetrics`) and counts params and MACs;
``size`` holds the dense and compressed sizes (unstructured zeros count there);
``latency`` times forward passes.
"""
from studio.engine.metrics.latency import LatencyResult, measure_latency
from studio.engine.metrics.metrics import ModelMetrics, count_macs, count_params, measure
from studio.engine.metrics.size import (
                                        compressed_size_bytes,
                                        decode_compressed,
                                        dense_size_bytes,
                                        encode_compressed,
                                        sparsity,
)

__all__ = ["LatencyResult", "ModelMetrics", "compressed_size_bytes", "count_macs", "count_params",
           "decode_compressed", "dense_size_bytes", "encode_compressed", "measure", "measure_latency", "sparsity"]
