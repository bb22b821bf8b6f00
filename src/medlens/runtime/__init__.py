"""Running bundles fast on a CPU: ONNX export with the preprocessing inside, and the backends that run them."""
