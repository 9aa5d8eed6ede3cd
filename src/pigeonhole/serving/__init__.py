"""Serving predictions: ONNX Runtime sessions in a bounded LRU, validated decoding, micro-batching."""
