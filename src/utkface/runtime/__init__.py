"""The runtime: decode images, find faces, crop them, run a model, write results.

The lowest stage: it imports nothing from the rest of the package, and nothing heavy at import
time (ONNX Runtime, torch, dlib and PyAV are imported where they are used).
"""
